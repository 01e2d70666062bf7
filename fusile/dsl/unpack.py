"""torch's splitting methods, unpacked into names: `a, b = x.chunk(2, dim=-1)`,
`q, k, v = qkv.split(64, dim=-1)`, `x0, x1 = x.unbind(0)` (and their `torch.` forms), and
`values, indices = torch.max(x, dim)` (or min). fusile
has no value for a tuple of tensors, but the statement says how many pieces it wants, so it is
rewritten before checking into the tuple of slices (or indices) torch would give, with bounds
from the axis's size, `size(x, dim)`: the slices are views of x, compiled for their sizes.

A statement torch would refuse (more names than pieces, or fewer) is no error here: chunk's
and split's last piece runs to the axis's end, and a piece past it is empty.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fusile.dsl import ast
from fusile.dsl.errors import BuiltinCallError, Span
from fusile.dsl.rewrite import At
from fusile.dsl.spellings import extreme_values, receiver

_SPLITTERS = ("chunk", "split", "unbind")


def unpack_splits(func: ast.FuncDef) -> ast.FuncDef:
    """`func` with each `names = <x.chunk / split / unbind call>` as a tuple of pieces."""
    body = []
    changed = False
    for s in func.body:
        if isinstance(s, ast.Assign) and isinstance(s.value, ast.Call):
            pieces = _pieces(s.value, len(s.targets))
            if pieces is not None:
                s = dataclasses.replace(s, value=ast.TupleExpr(s.value.span, tuple(pieces)))
                changed = True
        body.append(s)
    return dataclasses.replace(func, body=tuple(body)) if changed else func


def _pieces(call: ast.Call, n: int) -> list[ast.Expr] | None:
    f = call.func
    if isinstance(f, ast.Attribute) and f.attr in ("max", "min") and n == 2:
        values = extreme_values(call, "values", call.span)  # v, i = torch.max(x, dim)
        if values is not None:
            return [values, extreme_values(call, "indices", call.span)]  # type: ignore[list-item]
    if not isinstance(f, ast.Attribute) or f.attr not in _SPLITTERS:
        return None
    got = receiver(call)  # x.chunk(...) or torch.chunk(x, ...)
    if got is None:
        return None
    x, args = got
    kwargs = {k.name: k.value for k in call.kwargs}
    span = call.span
    if n < 2:
        raise BuiltinCallError(f"{f.attr}() gives several tensors: unpack them into names "
                               f"(a, b = x.{f.attr}(...))", span)
    first = "dim" if f.attr == "unbind" else {"chunk": "chunks", "split": "split_size"}[f.attr]
    names = (first,) if f.attr == "unbind" else (first, "dim")
    given = dict(zip(names, args, strict=False))
    if len(args) > len(names) or set(kwargs) - set(names) - {"split_size_or_sections"}:
        raise BuiltinCallError(f"{f.attr}() takes ({', '.join(names)})", span)
    if "split_size_or_sections" in kwargs:
        kwargs["split_size"] = kwargs.pop("split_size_or_sections")
    given.update(kwargs)
    dim = _int(given.get("dim"), 0, f"{f.attr}(): dim")
    if f.attr == "unbind":
        return [_index(x, dim, ast.Num(span, i), span) for i in range(n)]
    if first not in given:
        raise BuiltinCallError(f"{f.attr}() needs {first}", span)
    at = At(span)
    size = at.f("size", x, at.num(dim))
    if f.attr == "chunk":
        chunks = _int(given[first], None, "chunk(): chunks")
        if chunks != n:
            raise BuiltinCallError(f"x.chunk({chunks}) gives {chunks} pieces here; unpack "
                                   f"them into as many names (got {n})", span)
        step = at.op("floordiv", at.op("add", size, at.num(chunks - 1)), at.num(chunks))
        bounds: list[ast.Expr | None] = [at.op("mul", step, at.num(i))  # i * ceil(size / n)
                                         for i in range(n + 1)]
    else:
        sections = given[first]
        if isinstance(sections, ast.ListExpr | ast.TupleExpr):  # split([a, b, c], dim)
            sizes = [_int(s, None, "split(): a section size") for s in sections.items]
            if len(sizes) != n:
                raise BuiltinCallError(f"split() into {len(sizes)} sections; unpack them "
                                       f"into as many names (got {n})", span)
            offsets = [sum(sizes[:i]) for i in range(n + 1)]
            bounds = [ast.Num(span, o) for o in offsets]
        else:
            each = _int(sections, None, "split(): split_size")
            bounds = [ast.Num(span, each * i) for i in range(n + 1)]
    bounds[0], bounds[-1] = None, None  # from the start; the last runs to the end
    return [_slice(x, dim, bounds[i], bounds[i + 1], span) for i in range(n)]


def _int(e: Any, default: int | None, what: str) -> int:
    if e is None and default is not None:
        return default
    if isinstance(e, ast.UnaryOp) and e.op == "neg" and isinstance(e.operand, ast.Num):
        value: Any = -e.operand.value
    else:
        value = e.value if isinstance(e, ast.Num) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BuiltinCallError(f"{what} must be an integer literal here",
                               e.span if e is not None else None)
    return value


def _axis_items(dim: int, item: ast.Expr, span: Span) -> tuple[ast.Expr, ...]:
    """The index items that put `item` on axis `dim` of a tensor of any rank."""
    if dim >= 0:
        return (*(ast.Slice(span) for _ in range(dim)), item)
    return (ast.EllipsisLit(span), item, *(ast.Slice(span) for _ in range(-dim - 1)))


def _slice(x: ast.Expr, dim: int, lo: ast.Expr | None, hi: ast.Expr | None, span: Span
           ) -> ast.Expr:
    return ast.Subscript(span, x, _axis_items(dim, ast.Slice(span, lo, hi), span))


def _index(x: ast.Expr, dim: int, i: ast.Expr, span: Span) -> ast.Expr:
    return ast.Subscript(span, x, _axis_items(dim, i, span))
