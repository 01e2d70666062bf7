"""torch's norm spellings as formulas over the core builtins: `x.norm(dim=...)`,
`torch.linalg.vector_norm`, `F.normalize`, `F.layer_norm` and `F.rms_norm` (the 2-norm only;
normalization over the trailing axes that normalized_shape names)."""

from __future__ import annotations

from typing import Any

from fusile.dsl import ast
from fusile.dsl.errors import BuiltinCallError, Span
from fusile.dsl.rewrite import At

_PARAMS = {
    "norm": ("input", "p", "dim", "keepdim"),
    "vector_norm": ("input", "ord", "dim", "keepdim"),
    "normalize": ("input", "p", "dim", "eps"),
    "cosine_similarity": ("input", "x2", "dim", "eps"),
    "layer_norm": ("input", "normalized_shape", "weight", "bias", "eps"),
    "rms_norm": ("input", "normalized_shape", "weight", "eps"),
}


def spelled(span: Span, name: str, args: list[ast.Expr], kwargs: dict[str, ast.Expr]
            ) -> ast.Expr:
    """The core form of torch's `name` called with these arguments (the receiver first)."""
    names = _PARAMS[name]
    if len(args) > len(names) or set(kwargs) - set(names):
        raise BuiltinCallError(f"{name}() takes ({', '.join(names)})", span)
    a = dict(zip(names, args, strict=False)) | kwargs
    if "input" not in a:
        raise BuiltinCallError(f"{name}() needs its input", span)
    x = a["input"]

    at = At(span)
    num, op, f = at.num, at.op, at.f

    def norm2(dim: ast.Expr | None, keep: ast.Expr) -> ast.Expr:
        kw: dict[str, ast.Expr] = {"keepdims": keep}
        if dim is not None and not (isinstance(dim, ast.Const) and dim.value is None):
            kw["axis"] = dim
        return f("sqrt", f("sum", op("mul", x, x), **kw))

    if name in ("norm", "vector_norm", "normalize"):
        p = a.get("ord" if name == "vector_norm" else "p")
        if p is not None and not (isinstance(p, ast.Num) and p.value == 2):
            raise BuiltinCallError(f"{name}(): only the 2-norm is spelled in fusile (p=2); "
                                   f"write others from abs, sum and pow", p.span)
    if name != "normalize" and name in ("norm", "vector_norm"):
        return norm2(a.get("dim"), a.get("keepdim", ast.Const(span, False)))
    if name == "cosine_similarity":  # torch: each side over max(its norm, eps), then the dot
        dim, eps = a.get("dim", num(1)), a.get("eps", num(1e-8))
        if "x2" not in a:
            raise BuiltinCallError("cosine_similarity() takes (x1, x2, dim=1, eps=1e-8)", span)
        sides = [op("div", v, f("maximum", f("sqrt", f("sum", op("mul", v, v), axis=dim,
                                                        keepdims=ast.Const(span, True))), eps))
                 for v in (x, a["x2"])]
        return f("sum", op("mul", *sides), axis=dim)
    if name == "normalize":
        n = norm2(a.get("dim", num(1)), ast.Const(span, True))
        eps = a.get("eps", num(1e-12))
        return op("div", x, f("maximum", n, eps))
    shape = a.get("normalized_shape")
    if shape is None:
        raise BuiltinCallError(f"{name}() needs normalized_shape", span)
    k = len(shape.items) if isinstance(shape, ast.TupleExpr | ast.ListExpr) else 1
    axes: ast.Expr = num(-1) if k == 1 else ast.TupleExpr(span, tuple(
        num(-i) for i in range(k, 0, -1)))
    keep = ast.Const(span, True)
    centered: ast.Expr
    if name == "layer_norm":
        centered = op("sub", x, f("mean", x, axis=axes, keepdims=keep))
        spread = f("var", x, axis=axes, keepdims=keep, correction=num(0))
        eps = a.get("eps", num(1e-5))
    else:
        if "eps" not in a or (isinstance(a["eps"], ast.Const) and a["eps"].value is None):
            raise BuiltinCallError("rms_norm(): give eps= (torch's default, the dtype's "
                                   "machine epsilon, is not spelled in fusile)", span)
        centered = x
        spread = f("mean", op("mul", x, x), axis=axes, keepdims=keep)
        eps = a["eps"]
    y = op("mul", centered, f("rsqrt", op("add", spread, eps)))
    for param, how in (("weight", "mul"), ("bias", "add")):
        v: Any = a.get(param)
        if v is not None and not (isinstance(v, ast.Const) and v.value is None):
            y = op(how, y, v)
    return y
