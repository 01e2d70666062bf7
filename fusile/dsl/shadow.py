"""Locals that share a builtin's name, as Python scopes them: `var = x.var(-1)` or
`mean = sum(x) / n` is ordinary torch code. In Python a name assigned anywhere in a function is
that function's local everywhere in it, so every use of such a name means the local; the
builtin stays reachable through methods (`x.var()`) and the desugarings that call it. The
parser's tree gets those locals renamed to names no builtin and no other name of the function
has, before the checker sees it: the builtins' table, and everything later stages generate
from it, never meets the user's name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fusile.dsl import ast


def unshadow(func: ast.FuncDef, builtins: Any) -> ast.FuncDef:
    """`func` with each assigned local named like a builtin (a key of `builtins`) renamed."""
    assigned = {t for s in func.body if isinstance(s, ast.Assign) for t in s.targets}
    clashing = sorted(n for n in assigned if n in builtins)
    if not clashing:
        return func
    taken = assigned | {p.name for p in func.params} | set(builtins)
    names: dict[str, str] = {}
    for n in clashing:
        new = f"{n}_"
        while new in taken:
            new += "_"
        taken.add(new)
        names[n] = new
    return dataclasses.replace(func, body=tuple(_rename(s, names) for s in func.body))


def _rename(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, ast.Name):
        return dataclasses.replace(node, id=names[node.id]) if node.id in names else node
    if isinstance(node, tuple):
        return tuple(_rename(n, names) for n in node)
    if isinstance(node, ast.Assign):
        return dataclasses.replace(node, targets=tuple(names.get(t, t) for t in node.targets),
                                   value=_rename(node.value, names))
    if isinstance(node, ast.Node):
        changed = {f.name: new for f in dataclasses.fields(node) if f.name != "span"
                   for old in [getattr(node, f.name)] if (new := _rename(old, names)) is not old}
        return dataclasses.replace(node, **changed) if changed else node
    return node
