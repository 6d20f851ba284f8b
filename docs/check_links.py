"""Check the relative links of the project's Markdown files: every linked file exists and every #anchor
names a heading of its target (GitHub's heading ids).

    python docs/check_links.py            # README.md, BENCHMARKS.md, CHANGELOG.md, ARCHITECTURE.md, docs/*.md
    python docs/check_links.py FILE...
    python docs/check_links.py --names    # also: every `overlap_audit.x.y` imports, every `dir/file` path exists

Links to web addresses are not checked. Exits 1 and lists the broken links when there are any. --names
imports the package, so run it with the project installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILES = ["README.md", "BENCHMARKS.md", "CHANGELOG.md", "ARCHITECTURE.md", "docs/*.md"]

_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target); the target stops at whitespace or ')' (a title after a space is ignored)
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            yield n, line


def slug(heading: str) -> str:
    """GitHub's id for a heading: markup dropped, lower case, punctuation removed, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The heading ids of a Markdown file (a repeated heading gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_links(path: Path) -> list[str]:
    """One line per broken relative link of ``path``: where it is and what is wrong."""
    problems = []
    cache: dict[Path, set[str]] = {}
    for n, line in _prose_lines(path.read_text(encoding="utf-8")):
        for m in _LINK.finditer(_CODE_SPAN.sub("", line)):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / unquote(file_part)).resolve() if file_part else path
            where = f"{_shown(path)}:{n}: {target}"
            if not dest.exists():
                problems.append(f"{where}: no such file")
                continue
            if anchor:
                if dest.suffix != ".md":
                    problems.append(f"{where}: an anchor into a file that is not Markdown")
                    continue
                if dest not in cache:
                    cache[dest] = anchors(dest)
                if unquote(anchor) not in cache[dest]:
                    problems.append(f"{where}: no heading with id #{anchor} in {_shown(dest)}")
    return problems


_DOTTED = re.compile(r"`(overlap_audit(?:\.\w+)+)")
_PATH = re.compile(r"`((?:overlap_audit|detectors|benchmarks|notebooks|tests)/[\w./-]*\w)`")


def broken_names(path: Path) -> list[str]:
    """One line per `overlap_audit.x.y` name that does not import and per repository path that does not exist
    (code blocks included: examples must run too)."""
    import importlib

    problems = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for dotted in _DOTTED.findall(line):
            parts = dotted.split(".")
            for cut in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                try:
                    for attr in parts[cut:]:
                        obj = getattr(obj, attr)
                except AttributeError:
                    problems.append(f"{_shown(path)}:{n}: {dotted}: no such name")
                break
            else:
                problems.append(f"{_shown(path)}:{n}: {dotted}: does not import")
        for rel in _PATH.findall(line):
            if not (ROOT / rel).exists():
                problems.append(f"{_shown(path)}:{n}: {rel}: no such path")
    return problems


def files(patterns: list[str]) -> list[Path]:
    out = []
    for pattern in patterns:
        out.extend(sorted(ROOT.glob(pattern)) if any(c in pattern for c in "*?[") else [ROOT / pattern])
    return [p.resolve() for p in out if p.exists()]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    names = "--names" in args
    args = [a for a in args if a != "--names"]
    paths = files(args or DEFAULT_FILES)
    problems = [p for path in paths for p in broken_links(path)]
    if names:
        problems += [p for path in paths for p in broken_names(path)]
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
