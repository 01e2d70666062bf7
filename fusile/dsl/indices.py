"""torch's argmax and argmin as formulas over fusile's builtins: `x.argmax(dim)`,
`torch.argmin(x, dim, keepdim=True)`, and the indices of `torch.max(x, dim)` (`.indices`, or
`[1]`). The index of the first extreme along `dim`:

    m = max(x, axis=dim, keepdims=True)
    hit = (x == m) | ((x != x) & (m != m))     # torch: the first NaN, when there is one
    argmax = min(where(hit, index(x, dim), size(x, dim)), axis=dim)   # as int64

Two reductions a kernel runs over the same row (one read of a row that fits a block), with no
gradient (an integer result). Over every element (dim=None) only a 1-d tensor is spelled:
torch flattens, which fusile cannot (no reshape)."""

from __future__ import annotations

from fusile.dsl import ast
from fusile.dsl.errors import BuiltinCallError, Span, UnsupportedSyntaxError
from fusile.dsl.rewrite import At

NAMES = ("argmax", "argmin")


def spelled(span: Span, name: str, args: list[ast.Expr], kwargs: dict[str, ast.Expr],
            rank: int | None) -> ast.Expr:
    """The formula of torch's `name` for (input, dim=None, keepdim=False); `rank`: the
    input's rank when known (dim=None over a 1-d input is dim 0)."""
    names = ("input", "dim", "keepdim")
    if len(args) > len(names) or set(kwargs) - set(names):
        raise BuiltinCallError(f"{name}() takes (input, dim=None, keepdim=False)", span)
    a = dict(zip(names, args, strict=False)) | kwargs
    if "input" not in a:
        raise BuiltinCallError(f"{name}() needs its input", span)
    dim = a.get("dim")
    if dim is None or (isinstance(dim, ast.Const) and dim.value is None):
        if rank != 1:
            raise UnsupportedSyntaxError(
                f"{name}() over every element flattens the tensor, which fusile does not; "
                f"give dim= (or apply it to a 1-d tensor)", span)
        dim = ast.Num(span, 0)
    return indices_of(span, "max" if name == "argmax" else "min", a["input"], dim,
                      a.get("keepdim"))


def indices_of(span: Span, extreme: str, x: ast.Expr, dim: ast.Expr,
               keepdim: ast.Expr | None) -> ast.Expr:
    """The int64 index of the first `extreme` ("max" or "min") of x along dim."""
    at = At(span)
    f = at.f
    m = f(extreme, x, axis=dim, keepdims=ast.Const(span, True))
    nan = at.op("and_", at.cmp("!=", x, x), at.cmp("!=", m, m))
    hit = at.op("or_", at.cmp("==", x, m), nan)
    pos = f("where", hit, f("index", x, dim), f("size", x, dim))
    first = f("min", pos, axis=dim) if keepdim is None else \
        f("min", pos, axis=dim, keepdims=keepdim)
    return f("astype", first, ast.Str(span, "i64"))
