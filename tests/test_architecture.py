"""The import graph: no cycle anywhere, and every import allowed by ARCHITECTURE.md.

Imports inside functions count too (a lazy import is still a dependency). A module belongs to the most
specific component ARCHITECTURE.md lists for it; imports within one component are free (the no-cycle rule
still holds for them).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (("overlap_audit", ROOT / "overlap_audit"), ("overlap_audit.detectors", ROOT / "detectors"))


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES:
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def rules() -> dict[str, set[str]]:
    """ARCHITECTURE.md's table: component -> the components it may import."""
    table = {}
    for line in (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) == 3 and cells[0].startswith("`"):
            allowed = set(re.findall(r"`([\w.]+)`", cells[2]))
            table[cells[0].strip("`")] = allowed
    return table


def component(module: str, components) -> str:
    short = module.removeprefix("overlap_audit.") if module != "overlap_audit" else "overlap_audit"
    best = None
    for c in components:
        if short == c or short.startswith(c + "."):
            if best is None or len(c) > len(best):
                best = c
    return best


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_is_in_architecture_md():
    table = rules()
    assert table, "ARCHITECTURE.md has no component table"
    missing = [m for m in modules() if component(m, table) is None]
    assert not missing, f"modules ARCHITECTURE.md does not place: {missing}"


def test_every_import_is_allowed_by_architecture_md():
    table = rules()
    unknown = {a for allowed in table.values() for a in allowed} - set(table)
    assert not unknown, f"ARCHITECTURE.md allows imports of components it does not list: {unknown}"
    wrong = []
    for module, targets in import_graph().items():
        mine = component(module, table)
        for target in targets:
            theirs = component(target, table)
            if theirs != mine and theirs not in table[mine]:
                wrong.append(f"{module} imports {target} ({mine} may not import {theirs})")
    assert not wrong, "\n".join(sorted(wrong))


def test_every_allowed_import_is_used():
    """ARCHITECTURE.md says what each component needs now: an allowed import no module makes is stale."""
    table = rules()
    used: dict[str, set[str]] = {c: set() for c in table}
    for module, targets in import_graph().items():
        mine = component(module, table)
        used[mine] |= {component(t, table) for t in targets} - {mine}
    stale = sorted(f"{c} may import {a}, but no module of {c} does" for c in table for a in table[c] - used[c])
    assert not stale, "\n".join(stale)
