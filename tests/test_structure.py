"""The package's shape: no import circle in fusile/ and no file over 400 lines.

The import graph is read from the source with `ast`: every `import` and `from ... import` of a
fusile module, at module level or inside a function (a lazy import that dodges a circle is
still a circle), except those under `if TYPE_CHECKING:` (annotations only, never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fusile"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST, here: str, is_package: bool, modules: set[str]) -> set[str]:
    out: set[str] = set()
    todo = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                todo.extend(child.orelse)  # type: ignore[attr-defined]
                continue
            todo.append(child)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = here.split(".")[: len(here.split(".")) - child.level + is_package]
                    base = ".".join([*up, *([child.module] if child.module else [])])
                # `from fusile import config` depends on fusile.config, not on fusile's __init__
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                         for a in child.names]
            out.update(n for n in names if n in modules and n != here)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    mods = set(files)
    return {m: _imports(ast.parse(p.read_text()), m, p.name == "__init__.py", mods)
            for m, p in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle() -> None:
    graph = import_graph()
    assert "fusile.dsl.check" in graph and graph["fusile.compiler"]  # the reader sees imports
    assert circles(graph) == []


def test_the_circle_check_finds_a_circle() -> None:
    graph = {k: set(v) for k, v in import_graph().items()}
    graph["fusile.dsl.types"].add("fusile.compiler")  # compiler imports types, indirectly
    assert any("fusile.compiler" in c and "fusile.dsl.types" in c for c in circles(graph))


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_file_over_400_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 400, path


def test_every_planted_bug_still_applies() -> None:
    """tests/plants.py edits the source by exact text: a plant whose text moved away is no
    longer planted anywhere (seven had gone stale when this test was added)."""
    from tests.plants import PLANTS

    root = PACKAGE.parent
    stale = [p.name for p in PLANTS
             if not (root / p.path).is_file() or p.old not in (root / p.path).read_text()]
    assert stale == []
