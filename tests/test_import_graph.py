"""The import graph of the project's modules (docs/design.md, ../layout in the README):
no circle, and arrows only downward between packages.

Every ``import`` statement counts, also those inside functions (a lazy import is still a
dependency: ``experiments.claims -> sim -> registry -> claims`` was a circle through one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("costmodel", "lyapunov", "agents", "experiments", "bridge", "proofs")
# What each package may import (besides itself), from the layout of the repository. proofs/
# (pure-Python bound constants, importing nothing) is a leaf any package may use.
ALLOWED = {
    "costmodel": set(),
    "proofs": set(),
    "lyapunov": {"costmodel", "proofs"},
    "agents": {"costmodel", "lyapunov", "proofs"},
    "bridge": {"costmodel", "lyapunov", "agents", "proofs"},
    "experiments": {"costmodel", "lyapunov", "agents", "bridge", "proofs"},
    "splitwise_cli": {"costmodel", "lyapunov", "agents", "bridge", "experiments"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    mods = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    mods["splitwise_cli"] = ROOT / "splitwise_cli.py"
    return mods


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (resolved to the longest known name)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            parts = t.split(".")
            for i in range(len(parts), 0, -1):
                cand = ".".join(parts[:i])
                if cand in known and cand != name:
                    out.add(cand)
                    break
    # a package's __init__ is imported by every submodule import; it is not a dependency edge
    return {m for m in out if not name.startswith(m + ".")}


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    known = set(mods)
    return {name: imports_of(path, name, known) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes, or None (iterative DFS)."""
    color = dict.fromkeys(graph, 0)
    for start in sorted(graph):
        if color[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        color[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                color[node] = 2
                stack.pop()
                path.pop()
            elif color.get(nxt, 2) == 1:
                return path[path.index(nxt):] + [nxt]
            elif color.get(nxt) == 0:
                color[nxt] = 1
                stack.append((nxt, iter(sorted(graph[nxt]))))
                path.append(nxt)
    return None


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    cyc = find_cycle(graph)
    assert cyc is not None and cyc[0] == cyc[-1] and set(cyc) == {"a", "b", "c"}
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_relative_and_lazy_imports_are_seen(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from costmodel import dp\n")
    assert imports_of(src, "x.m", {"costmodel", "costmodel.dp"}) == {"costmodel.dp"}


def test_no_import_cycle():
    cyc = find_cycle(import_graph())
    assert cyc is None, "import circle: " + " -> ".join(cyc)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_arrows_point_down(package):
    graph = import_graph()
    bad = sorted((m, d) for m, deps in graph.items()
                 if m.split(".")[0] == package for d in deps
                 if d.split(".")[0] != package and d.split(".")[0] not in ALLOWED[package])
    assert not bad, f"{package} imports above itself: {bad}"
