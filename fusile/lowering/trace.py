"""Typed program -> expression graph: the checked body as a DAG of primitive operations.

The statements are walked as the Lowerer walks them (walk.py); expressions mirror its
`_expr`: constants are folded, spellings are read through their desugared form, @fused
calls are inlined and locals name shared nodes. What comes out is small and explicit, one
`Node` per operation with its type and the user's line, which is what autodiff reads and
what `to_source` prints back as DSL text.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from fusile.dsl import ast
from fusile.dsl.builtins import shape_only
from fusile.dsl.errors import DerivativeError, Source, Span
from fusile.dsl.typed import Typed
from fusile.dsl.types import ScalarType, ShapeEnv, TensorType, ValueType
from fusile.lowering.walk import Walk

_IDS = itertools.count()


@dataclass(eq=False)
class Node:
    """One operation. `op` is "param", "const", a BinOp/UnaryOp name ("add", "neg"), "cmp"
    (attrs["cmp"] holds the comparison), "view" (attrs["dims"]: per result axis the source
    axis, or None for a new axis of 1) or a builtin's name (attrs: "options", "axes")."""

    op: str
    args: tuple[Node, ...]
    type: ValueType
    attrs: dict[str, Any] = field(default_factory=dict)
    span: Span | None = None
    source: Source | None = None
    # shape-only arguments (size(x, 1), expand_as(g, x)): the node is read for its type only
    shape_args: frozenset[int] = frozenset()
    id: int = field(default_factory=lambda: next(_IDS))

    @property
    def is_tensor(self) -> bool:
        return isinstance(self.type, TensorType)

    @property
    def shape(self) -> tuple:
        return self.type.shape if isinstance(self.type, TensorType) else ()

    @property
    def is_float(self) -> bool:
        return self.type.dtype.is_float

    def __repr__(self) -> str:
        return f"<{self.op}#{self.id} {self.type}>"


@dataclass
class Traced:
    """A program as nodes: its parameters (runtime ones, then sliced views of them), its
    lowered results (a returned concat is its pieces) and the shape environment."""

    params: list[Node]
    results: list[Node]
    env: ShapeEnv
    name: str
    source: Source
    # nodes made for the backward that the forward computes (a softmax's log-sum-exp), by the
    # node they belong to: shared by every derivation, so each binds to the same saved value
    extra: dict[int, Node] = field(default_factory=dict)


def trace(typed: Typed) -> Traced:
    """The DAG of a checked top-level function."""
    params: list[Node] = []
    scope: dict[str, Node] = {}
    fdef = typed.func
    for i, (p, t, is_const) in enumerate(zip(fdef.params, typed.param_types,
                                             typed.param_is_const, strict=True)):
        if isinstance(t, TensorType) or (isinstance(t, ScalarType) and not is_const):
            node = Node("param", (), t, {"name": p.name, "index": i}, p.span, typed.source)
            params.append(node)
            scope[p.name] = node
    for k, ((p, ops), (dname, t)) in enumerate(typed.derived.items()):
        node = Node("param", (), t, {"name": f"{fdef.params[p].name}_v{k}", "index": p,
                                     "slice": ops}, fdef.params[p].span, typed.source)
        params.append(node)
        scope[dname] = node
    results = _Walker(typed, scope).body()
    return Traced(params, results, typed.env, fdef.name, typed.source)


class _Walker(Walk[Node]):
    def __init__(self, typed: Typed, scope: dict[str, Node]):
        super().__init__(typed, scope)
        self.memo: dict[int, Node] = {}

    def nested(self, callee: Typed, scope: dict[str, Node]) -> _Walker:
        return _Walker(callee, scope)

    def node(self, op: str, args: list[Node], e: ast.Expr, **attrs: Any) -> Node:
        return Node(op, tuple(args), self.t.type_of(e), attrs, e.span, self.t.source)

    def expr(self, e: ast.Expr) -> Node:
        hit = self.memo.get(id(e))
        if hit is None:
            hit = self.memo[id(e)] = self._expr(e)
        return hit

    def _expr(self, e: ast.Expr) -> Node:
        t = self.t
        if id(e) in t.consts:
            return self.node("const", [], e, value=t.consts[id(e)])
        if id(e) in t.desugared:
            return self.expr(t.desugared[id(e)])
        if isinstance(e, ast.Name):
            return self.scope[e.id]
        if isinstance(e, ast.Call) and id(e) in t.inlined:
            (only,) = self.inline(e)
            return only
        if id(e) in t.concats or id(e) in t.unlowered:
            raise DerivativeError("the backward of a concat is not implemented yet",
                                  e.span, t.source)
        if id(e) in t.builtins:
            bound = t.builtins[id(e)]
            args = [self.expr(a) for a in t.builtin_args[id(e)]]
            made = self.node(bound.name, args, e, options=dict(bound.options), axes=bound.axes)
            made.shape_args = frozenset(i for i in range(len(args)) if shape_only(bound.name, i))
            return made
        if isinstance(e, ast.BinOp):
            return self.node(e.op, [self.expr(e.left), self.expr(e.right)], e)
        if isinstance(e, ast.Compare):
            return self.node("cmp", [self.expr(e.left), self.expr(e.right)], e, cmp=e.op)
        if isinstance(e, ast.UnaryOp):
            x = self.expr(e.operand)
            return x if e.op == "pos" else self.node(e.op, [x], e)
        if isinstance(e, ast.Subscript | ast.Attribute):
            return self.node("view", [self.expr(e.value)], e, dims=t.views[id(e)])
        raise DerivativeError(f"cannot differentiate {type(e).__name__}", e.span, t.source)

    def inline(self, e: ast.Call) -> list[Node]:
        callee, _ = self.t.inlined[id(e)]
        if callee.derived or callee.concats:
            raise DerivativeError("the backward of a called @fused function that slices or "
                                  "concatenates is not implemented yet", e.span, self.t.source)
        return super().inline(e)
