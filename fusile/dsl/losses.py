"""torch's losses as formulas over fusile's builtins, so a loss written as torch code fuses
(and differentiates) like the rest of the body: F.mse_loss, F.l1_loss, F.smooth_l1_loss,
F.binary_cross_entropy_with_logits (its overflow-free form) and F.cross_entropy over class
indices on axis 1 (ignore_index; no class weights or label smoothing), each with
reduction='mean' | 'sum' | 'none'. A target outside [0, C) other than ignore_index is not
checked here (torch raises): its row's loss is the log-sum-exp alone. fusile.stdlib's
cross_entropy checks its targets."""

from __future__ import annotations

from fusile.dsl import ast
from fusile.dsl.errors import BuiltinCallError, Span
from fusile.dsl.rewrite import At

_PARAMS: dict[str, tuple[str, ...]] = {
    "mse_loss": ("input", "target", "reduction"),
    "l1_loss": ("input", "target", "reduction"),
    "smooth_l1_loss": ("input", "target", "reduction", "beta"),
    "binary_cross_entropy_with_logits": ("input", "target", "reduction"),
    "cross_entropy": ("input", "target", "reduction", "ignore_index"),
}
NAMES = tuple(_PARAMS)


def spelled(span: Span, name: str, args: list[ast.Expr], kwargs: dict[str, ast.Expr]
            ) -> ast.Expr:
    names = _PARAMS[name]
    if len(args) > 2 or set(kwargs) - set(names):  # torch's third positional is a weight
        raise BuiltinCallError(f"{name}() takes (input, target, *, "
                               f"{', '.join(n + '=' for n in names[2:])}); fusile spells no "
                               f"weights or label smoothing", span)
    a = dict(zip(names, args, strict=False)) | kwargs
    if "input" not in a or "target" not in a:
        raise BuiltinCallError(f"{name}() needs input and target", span)
    x, t = a["input"], a["target"]
    mode = a.get("reduction", ast.Str(span, "mean"))
    if not isinstance(mode, ast.Str) or mode.value not in ("mean", "sum", "none"):
        raise BuiltinCallError(f"{name}(): reduction must be 'mean', 'sum' or 'none'", span)

    at = At(span)
    num, op, f = at.num, at.op, at.f

    def reduce(v: ast.Expr) -> ast.Expr:
        return v if mode.value == "none" else f(mode.value, v)

    if name == "cross_entropy":
        ignore = a.get("ignore_index", num(-100))
        label = ast.Subscript(span, t, (ast.Slice(span), ast.Const(span, None),
                                        ast.EllipsisLit(span)))  # t.unsqueeze(1)
        picked = f("sum", f("where", at.cmp("==", f("index", x, num(1)), label), x,
                            num(0.0)), axis=num(1))
        valid = at.cmp("!=", t, ignore)
        each = f("where", valid, op("sub", f("logsumexp", x, axis=num(1)), picked), num(0.0))
        if mode.value != "mean":
            return reduce(each)
        count = f("sum", f("astype", valid, ast.Str(span, "f32")))  # exact past 256 rows
        return f("astype", op("div", f("sum", each), count), x)  # in x's dtype, as torch
    d = op("sub", x, t)
    if name == "mse_loss":
        return reduce(op("mul", d, d))
    if name == "l1_loss":
        return reduce(f("abs", d))
    if name == "smooth_l1_loss":
        beta = a.get("beta", num(1.0))
        e = f("abs", d)
        return reduce(f("where", at.cmp("<", e, beta),
                        op("div", op("mul", num(0.5), op("mul", d, d)), beta),
                        op("sub", e, op("mul", num(0.5), beta))))
    assert name == "binary_cross_entropy_with_logits"  # max(x, 0) - x t + log(1 + e^-|x|)
    return reduce(op("add", op("sub", f("maximum", x, num(0.0)), op("mul", x, t)),
                     f("log1p", f("exp", at.neg(f("abs", x))))))
