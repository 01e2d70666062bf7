"""The statement walk of a checked body, shared by the two readers of `Typed`: the Lowerer
(to_mlir.py, MLIR values) and the tracer (trace.py, graph nodes).

Both bind locals in order, skip an assigned concat (its consumers read its pieces), read a
returned concat as its pieces, and inline a called @fused function (its omitted parameters
take their defaults, evaluated in the callee). Keeping that walk in one place keeps the two
in step: the derived backward must see the program lowering sees.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from fusile.dsl import ast
from fusile.dsl.typed import Typed

V = TypeVar("V")


class Walk(Generic[V]):
    """Subclasses give `expr` (one expression's value) and `nested` (a walker of a callee)."""

    def __init__(self, typed: Typed, scope: dict[str, V]):
        self.t = typed
        self.scope = scope

    def expr(self, e: ast.Expr) -> V:
        raise NotImplementedError

    def nested(self, callee: Typed, scope: dict[str, V]) -> Walk[V]:
        raise NotImplementedError

    def body(self) -> list[V]:
        """Bind the body's locals; the returned values (a returned concat as its pieces)."""
        results: list[V] = []
        for stmt in self.t.func.body:
            if isinstance(stmt, ast.Assign):
                value = stmt.value
                if id(value) in self.t.unlowered:  # a concat: its consumers read its pieces
                    continue
                if isinstance(value, ast.TupleExpr):
                    for name, v in zip(stmt.targets, value.items, strict=True):
                        if id(v) not in self.t.unlowered:
                            self.scope[name] = self.expr(v)
                else:
                    for name, val in zip(stmt.targets, self.multi(value), strict=True):
                        self.scope[name] = val
            else:
                for e in stmt.values:
                    pieces = self.t.pieces.get(id(e))
                    results.extend(self.multi(e) if pieces is None else map(self.expr, pieces))
        return results

    def multi(self, e: ast.Expr) -> list[V]:
        """An expression's values: several for a call of a function returning several."""
        if isinstance(e, ast.Call) and id(e) in self.t.inlined:
            return self.inline(e)
        return [self.expr(e)]

    def inline(self, e: ast.Call) -> list[V]:
        callee, args = self.t.inlined[id(e)]
        scope: dict[str, V] = {}
        for p, a in zip(callee.func.params, args, strict=True):
            if a is not None:
                scope[p.name] = self.expr(a)
            else:
                assert p.default is not None
                scope[p.name] = self.nested(callee, {}).expr(p.default)
        return self.nested(callee, scope).body()
