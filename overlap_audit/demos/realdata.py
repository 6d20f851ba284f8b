"""The real-data demo's data, from Debian packages: openclipart-png (8,121 public-domain PNGs) as the
pretraining corpus and tuxpaint-stamps-default (about 800 captioned stamps) as the evaluation set.

Both are fetched with ``apt-get download`` and unpacked with ``dpkg -x`` into a cache folder (no root),
and reused from there. The stamps become an ImageFolder: one class per top-level category, each stamp
with a ``.txt`` caption holding the first line of its Tux Paint description (the other lines are
translations such as ``fr.utf8=...``).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import FetchError, OutputDirError, param
from . import check_demo_dir

CORPUS_PACKAGE = "openclipart-png"
EVAL_PACKAGE = "tuxpaint-stamps-default"
CORPUS_SUBDIR = "usr/share/openclipart/png"
STAMPS_SUBDIR = "usr/share/tuxpaint/stamps"
_DONE = ".complete"


@dataclass(frozen=True)
class RealDemoData:
    """Where the real-data demo's corpus and evaluation set lie, and what went into them."""

    corpus: Path  # a folder of PNGs (index it as is)
    eval: Path  # an ImageFolder: <category>/<path>.png with a one-line .txt caption
    n_stamps: int
    n_captioned: int
    svg_only: list[str]  # stamps with no PNG (PIL cannot read SVG): left out, listed here
    cache: Path


def default_cache_dir() -> Path:
    """~/.cache/overlap-audit (or $XDG_CACHE_HOME/overlap-audit), decided at call time."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "overlap-audit"


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise FetchError(f"{what}: {cmd[0]} is not installed (this needs a Debian or Ubuntu system)") from None
    if r.returncode != 0:
        raise FetchError(f"{what}: `{' '.join(cmd)}` failed: {(r.stderr or r.stdout).strip()[-500:]} "
                         "(run `apt-get update` if the package is not found)")


def _newest(debs: list[str]) -> str:
    """The .deb with the highest Debian version (PKG_VERSION_ARCH.deb; dpkg's order: 1.10 > 1.9)."""
    import functools

    def version(path: str) -> str:
        parts = os.path.basename(path)[:-len(".deb")].split("_")
        v = parts[1].replace("%3a", ":") if len(parts) == 3 else ""
        return v if v.split(":")[-1][:1].isdigit() else ""  # Debian versions start with a digit

    def compare(a: str, b: str) -> int:
        va, vb = version(a), version(b)
        if not va or not vb:  # a name that carries no version sorts first
            return (va > "") - (vb > "") or (a > b) - (a < b)
        if va == vb:
            return (a > b) - (a < b)
        return 1 if subprocess.run(["dpkg", "--compare-versions", va, "gt", vb]).returncode == 0 else -1

    return max(debs, key=functools.cmp_to_key(compare))


def fetch_debian_package(package: str, cache_dir: str | os.PathLike | None = None, *,
                         debs_dir: str | os.PathLike | None = None) -> Path:
    """The root a Debian package's files are unpacked under, downloading and unpacking it once.

    A ``.deb`` already in ``debs_dir`` (or in the cache) is used instead of downloading.
    """
    # absolute: dpkg runs in another working directory
    cache = (Path(cache_dir) if cache_dir is not None else default_cache_dir()).resolve()
    root = cache / "extracted" / package
    if (root / _DONE).exists():
        return root
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if debs_dir is not None:  # the user's own .deb files: nothing is downloaded
        found = sorted(glob.glob(str(Path(debs_dir).resolve() / f"{package}_*.deb")))
        if not found:
            raise FetchError(f"no {package}_*.deb in {debs_dir}; `apt-get download {package}` there, or leave out "
                             f"{param('debs_dir')} to download it into the cache")
    else:
        found = sorted(glob.glob(str(debs / f"{package}_*.deb")))
    if not found:
        _run(["apt-get", "download", package], debs, f"downloading {package}")
        found = sorted(glob.glob(str(debs / f"{package}_*.deb")))
        if not found:
            raise FetchError(f"apt-get download {package} left no .deb in {debs}")
    deb = _newest(found)
    tmp = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=_mkdir(root.parent))).resolve()
    try:
        _run(["dpkg", "-x", deb, str(tmp)], tmp, f"unpacking {deb}")
        (tmp / _DONE).write_text(os.path.basename(deb) + "\n")
        if root.exists():
            shutil.rmtree(root)  # an earlier unpack that did not finish
        tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_stamps(stamps_root: str | os.PathLike, out_dir: str | os.PathLike) -> RealDemoData:
    """Lay Tux Paint's stamps out as an ImageFolder under ``out_dir`` (reused when complete)."""
    src, out = Path(stamps_root), Path(out_dir)
    if not src.is_dir():
        raise FetchError(f"{src} is not a Tux Paint stamps folder")
    pngs = sorted(p for p in src.rglob("*.png") if p.is_file())
    svg_only = sorted(str(p.relative_to(src)) for p in src.rglob("*.svg") if not p.with_suffix(".png").exists())
    done = out.with_name(out.name + _DONE)  # beside, not inside: the folder must hold only the stamps
    if not done.exists():
        if out.exists():
            shutil.rmtree(out)
        tmp = Path(tempfile.mkdtemp(prefix=".stamps-", dir=_mkdir(out.parent)))
        for png in pngs:
            rel = png.relative_to(src)
            if len(rel.parts) < 2:
                continue  # a stamp outside any category has no class
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, dest)
            caption = _first_line(png.with_suffix(".txt"))
            if caption:
                dest.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        tmp.rename(out)
        done.write_text("")
    captioned = sum(1 for _ in out.rglob("*.txt"))
    n = sum(1 for _ in out.rglob("*.png"))
    return RealDemoData(corpus=Path(), eval=out, n_stamps=n, n_captioned=captioned, svg_only=svg_only,
                        cache=out.parent)


def _first_line(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.strip():
                    return line.strip()
    except OSError:
        return None
    return None


def fetch_real_demo_data(cache_dir: str | os.PathLike | None = None, *,
                         debs_dir: str | os.PathLike | None = None) -> RealDemoData:
    """Fetch (or reuse) openclipart-png and tuxpaint-stamps-default and prepare the evaluation set.

    Index ``corpus`` as it is: its one 231-megapixel PNG is skipped as a decompression bomb and recorded so
    in the index (``index.skipped_items``).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    corpus_root = fetch_debian_package(CORPUS_PACKAGE, cache, debs_dir=debs_dir) / CORPUS_SUBDIR
    stamps_root = fetch_debian_package(EVAL_PACKAGE, cache, debs_dir=debs_dir) / STAMPS_SUBDIR
    if not corpus_root.is_dir():
        raise FetchError(f"{CORPUS_PACKAGE} unpacked without {CORPUS_SUBDIR}; remove {cache / 'extracted'} "
                         "and try again")
    data = prepare_stamps(stamps_root, cache / "tuxpaint-eval")
    return RealDemoData(corpus=corpus_root, eval=data.eval, n_stamps=data.n_stamps, n_captioned=data.n_captioned,
                        svg_only=data.svg_only, cache=cache)


# Tux Paint's top-level category folders as a person would say them (the rest read as themselves).
READABLE_CATEGORIES = {"naturalforces": "natural forces"}
DEFAULT_MODEL = "overlap-audit:openclipart-small"


def drawing_templates_path() -> Path:
    """The shipped prompt templates for drawings (the demo's stamps are clip art, not photos)."""
    return Path(__file__).parent.parent / "templates" / "drawings.txt"


@dataclass(frozen=True)
class RealDemoResult:
    """The real-data demo's report and where its pieces lie."""

    data: RealDemoData
    index_dir: Path
    report_dir: Path
    report: object  # overlap_audit.report.Report
    n_corpus_skipped: int
    corpus_skipped: list[tuple[str, str]]  # (id, reason) of every corpus image that was not indexed

    def summary(self) -> str:
        lines = [f"corpus: {self.data.corpus} ({self.n_corpus_skipped} images skipped, in the skip_reason "
                 f"column of {self.index_dir}/shards/*.parquet)"]
        lines += [f"  skipped {i}: {r}" for i, r in self.corpus_skipped[:20]]
        if len(self.corpus_skipped) > 20:
            lines.append(f"  … and {len(self.corpus_skipped) - 20} more")
        lines.append(f"evaluation set: {self.data.eval} ({self.data.n_stamps} stamps, {self.data.n_captioned} "
                     f"captioned; {len(self.data.svg_only)} SVG-only stamps left out)")
        return "\n".join(lines)


OWN_ENTRIES = ("index", "report", "classnames.json")  # what run_real_demo writes into its directory


def _index_entries() -> tuple[str, ...]:
    from ..index import IDS_FILE, INDEX_FILE, MANIFEST, PROGRESS, SHARD_DIR, VECTORS_FILE

    return (IDS_FILE, INDEX_FILE, MANIFEST, PROGRESS, SHARD_DIR, VECTORS_FILE)


def _check_index_dir(index_dir: Path) -> None:
    """Refuse an index directory holding files an index build does not write (named in the error)."""
    check_demo_dir(index_dir, _index_entries())
    shards = index_dir / _index_entries()[4]
    if shards.is_dir():
        foreign = sorted(p.name for p in shards.iterdir() if not p.name.startswith(("shard-", ".shard-")))
        if foreign:
            raise OutputDirError(f"{shards} holds {str(shards / foreign[0])!r}, which an index build does not "
                                 "write; move it away or give the demo another directory")


def _remove_index(index_dir: Path) -> None:
    """Delete the demo's own index, file by file (``_check_index_dir`` has refused anything else)."""
    _check_index_dir(index_dir)
    for name in _index_entries():
        path = index_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()


def run_real_demo(out_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                  debs_dir: str | os.PathLike | None = None, model: str = DEFAULT_MODEL, detector: str = "phash",
                  workers: int | None = None, progress: bool = True, gallery: int = 300,
                  templates: str | os.PathLike | None = None) -> RealDemoResult:
    """Fetch both packages (or reuse the cache), index openclipart, and audit the small CLIP zero-shot on
    the Tux Paint stamp categories: ``out_dir/index`` and ``out_dir/report`` (with report.html).
    ``templates`` default to the shipped drawing templates (``drawing_templates_path``)."""
    import json

    from ..api import ReportSettings, build_index, run_report
    from ..index import load_index, skipped_items
    from ..settings import IndexSettings, MatchSettings, ZeroShotSettings
    from ..report import check_report_dir

    out = Path(out_dir)
    check_demo_dir(out, OWN_ENTRIES)
    index_dir, report_dir = out / "index", out / "report"
    check_report_dir(report_dir)
    _check_index_dir(index_dir)
    data = fetch_real_demo_data(cache_dir, debs_dir=debs_dir)
    built = index_dir / "manifest.json"
    if built.exists() and load_index(index_dir, load_faiss=False).manifest.detector.spec != detector:
        _remove_index(index_dir)  # the demo's own index, built by another detector: build it again
    if built.exists():
        pass  # a finished index from an earlier run with this detector: reuse it
    else:
        resume = index_dir.exists() and any(index_dir.iterdir())
        build_index([str(data.corpus)], index_dir, IndexSettings(detector=detector, workers=workers, resume=resume),
                    progress=progress)
    classes = sorted(p.name for p in data.eval.iterdir() if p.is_dir())
    _mkdir(out)
    classnames = out / "classnames.json"
    classnames.write_text(json.dumps({c: READABLE_CATEGORIES.get(c, c) for c in classes}, indent=1) + "\n",
                          encoding="utf-8")
    zero_shot = ZeroShotSettings(model, classnames=str(classnames), templates=str(templates or drawing_templates_path()))
    report = run_report(index_dir, [("tuxpaint", str(data.eval))],
                        ReportSettings(report_dir, zero_shot=zero_shot, gallery=gallery,
                                       match=MatchSettings(detector=detector, workers=workers, progress=progress)))
    skipped = [(s.id, s.reason) for s in skipped_items(index_dir)]
    return RealDemoResult(data=data, index_dir=index_dir, report_dir=report_dir, report=report,
                          n_corpus_skipped=len(skipped), corpus_skipped=skipped)
