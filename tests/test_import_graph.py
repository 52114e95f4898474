"""The package's import graph (read from the source with ``ast``, imports inside functions included): no cycles,
priors never reach the training code, no private name imported across modules, and every module imports."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Dict, List, Set

import pytest

PKG = Path(__file__).resolve().parents[1] / "invsolve"


def modules() -> Dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(name: str, path: Path, mods: Dict[str, Path]):
    """``(imported modules, [(line, private name)])`` of one module: ``from X import y`` counts as importing the
    module ``X.y`` if there is one, else ``X``."""
    is_pkg = path.name == "__init__.py"
    edges: Set[str] = set()
    private: List = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            edges |= {a.name for a in node.names if a.name in mods}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("invsolve"):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                edges.add(sub if sub in mods else target)
                if a.name.startswith("_") and not a.name.startswith("__"):
                    private.append((node.lineno, f"{target}.{a.name}"))
    return edges & set(mods), private


@pytest.fixture(scope="module")
def graph():
    mods = modules()
    return mods, {m: imports(m, p, mods) for m, p in mods.items()}


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle(graph):
    mods, g = graph
    assert len(mods) > 60
    assert cycles({m: e for m, (e, _) in g.items()}) == []


def test_priors_never_reach_the_training_code(graph):
    _, g = graph
    seen, todo = set(), [m for m in g if m.startswith("invsolve.priors")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += list(g[m][0])
    assert "invsolve.train" not in seen


def test_no_private_name_is_imported_across_modules(graph):
    _, g = graph
    found = {m: p for m, (_, p) in g.items() if p}
    assert not found, found


def test_every_module_imports():
    for m in modules():
        importlib.import_module(m)
