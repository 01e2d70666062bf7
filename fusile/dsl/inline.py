"""Calls of other @fused functions: checked with the caller's argument types and inlined, so
the standard library composes with user code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fusile.dsl import ast, concat
from fusile.dsl.errors import BuiltinCallError, ShapeMismatchError, Source, UnsupportedSyntaxError
from fusile.dsl.typed import Binding, MultiType, Typed

if TYPE_CHECKING:
    from fusile.dsl.check import Checker
    from fusile.dsl.types import ValueType


def inline(ck: Checker, e: ast.Call, fused_fn: Any,
           kwargs: dict[str, ast.Expr]) -> ValueType | MultiType:
    if ck.depth > 32:
        raise UnsupportedSyntaxError("@fused calls nest too deeply (recursion?)", e.span)
    func: ast.FuncDef = fused_fn.__fusile_funcdef__
    source: Source = fused_fn.__fusile_source__
    params = [p.name for p in func.params]
    if len(e.args) > len(params):
        raise BuiltinCallError(
            f"{func.name}() takes {len(params)} arguments, got {len(e.args)}", e.span)
    args: list[ast.Expr | None] = [*e.args, *([None] * (len(params) - len(e.args)))]
    for k, v in kwargs.items():
        if k not in params:
            raise BuiltinCallError(f"{func.name}() got an unexpected keyword argument {k!r}",
                                   v.span)
        if args[params.index(k)] is not None:
            raise BuiltinCallError(f"{func.name}() got two values for {k!r}", v.span)
        args[params.index(k)] = v
    callee = Typed(func, source, ck.t.env)
    inner = type(ck)(callee, fused_fn.__fusile_globals__, ck.depth + 1)
    bindings: list[Binding] = []
    for p, a in zip(func.params, args, strict=True):
        if a is None:
            if p.default is None:
                raise BuiltinCallError(f"{func.name}() is missing argument {p.name!r}",
                                       e.span)
            b = inner.binding(p.default)
            if not b.is_const:
                raise UnsupportedSyntaxError("a parameter default must be a constant",
                                             p.default.span)
        else:
            b = ck.binding(a)
            concat.refuse(ck, [a], f"{func.name}(), a @fused function,")
            if isinstance(b.type, tuple):
                raise ShapeMismatchError("cannot pass several values as one argument",
                                         a.span)
        bindings.append(b)
    inner.run(bindings)
    ck.t.inlined[id(e)] = (callee, args)
    types = tuple(callee.result_types)
    return types[0] if len(types) == 1 else types

# ------------------------------------------------------------------ views
