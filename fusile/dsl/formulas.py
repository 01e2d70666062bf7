"""torch functions that are formulas over fusile's builtins: activations (F.leaky_relu, elu,
selu, celu, relu6, hardtanh, hardsigmoid, hardswish, mish, softplus, logsigmoid, softsign),
F.softmin, x.masked_fill, clamp_min / clamp_max,
reciprocal, sign, lerp, log10. Each becomes the formula torch documents, written in the
core language, so it fuses, differentiates and cross-compiles like hand-written math."""

from __future__ import annotations

import math

from fusile.dsl import ast
from fusile.dsl.errors import BuiltinCallError, Span
from fusile.dsl.rewrite import At

# name: (parameters, defaults of the trailing ones)
_PARAMS: dict[str, tuple[tuple[str, ...], dict[str, float]]] = {
    "leaky_relu": (("input", "negative_slope"), {"negative_slope": 0.01}),
    "elu": (("input", "alpha"), {"alpha": 1.0}),
    "selu": (("input",), {}),
    "celu": (("input", "alpha"), {"alpha": 1.0}),
    "logsigmoid": (("input",), {}),
    "softsign": (("input",), {}),
    "softmin": (("input", "dim"), {}),
    "relu6": (("input",), {}),
    "hardtanh": (("input", "min_val", "max_val"), {"min_val": -1.0, "max_val": 1.0}),
    "hardsigmoid": (("input",), {}),
    "hardswish": (("input",), {}),
    "mish": (("input",), {}),
    "softplus": (("input", "beta", "threshold"), {"beta": 1.0, "threshold": 20.0}),
    "masked_fill": (("input", "mask", "value"), {}),
    "clamp_min": (("input", "min"), {}),
    "clamp_max": (("input", "max"), {}),
    "reciprocal": (("input",), {}),
    "sign": (("input",), {}),
    "lerp": (("input", "end", "weight"), {}),
    "log10": (("input",), {}),
}
NAMES = tuple(_PARAMS)
METHODS = ("masked_fill", "clamp_min", "clamp_max", "reciprocal", "sign", "lerp", "log10")


def spelled(span: Span, name: str, args: list[ast.Expr], kwargs: dict[str, ast.Expr]
            ) -> ast.Expr:
    """The formula of torch's `name` for these arguments (a method's receiver first)."""
    names, defaults = _PARAMS[name]
    kw = {k: v for k, v in kwargs.items() if k != "inplace"}  # F.*(inplace=): same values
    if len(args) > len(names) or set(kw) - set(names):
        raise BuiltinCallError(f"{name}() takes ({', '.join(names)})", span)
    a: dict[str, ast.Expr] = {k: ast.Num(span, v) for k, v in defaults.items()}
    a |= dict(zip(names, args, strict=False)) | kw
    missing = [n for n in names if n not in a]
    if missing:
        raise BuiltinCallError(f"{name}() needs {', '.join(missing)}", span)
    x = a["input"]

    at = At(span)
    num, op, f = at.num, at.op, at.f

    def positive(v: ast.Expr) -> ast.Expr:
        return at.cmp(">", v, num(0.0))

    def clip(v: ast.Expr, lo: ast.Expr, hi: ast.Expr) -> ast.Expr:
        return f("minimum", f("maximum", v, lo), hi)

    if name == "leaky_relu":
        return f("where", positive(x), x, op("mul", x, a["negative_slope"]))
    if name == "elu":  # alpha * (exp(x) - 1) below 0; exp of a positive x is never used
        return f("where", positive(x), x,
                 op("mul", a["alpha"], f("expm1", f("minimum", x, num(0.0)))))
    if name == "selu":  # torch's constants: scale * elu(x, alpha)
        neg = op("mul", num(_SELU_ALPHA), f("expm1", f("minimum", x, num(0.0))))
        return op("mul", num(_SELU_SCALE), f("where", positive(x), x, neg))
    if name == "celu":  # max(0, x) + min(0, alpha * (exp(x / alpha) - 1))
        return f("where", positive(x), x, op("mul", a["alpha"], f("expm1", op(
            "div", f("minimum", x, num(0.0)), a["alpha"]))))
    if name == "logsigmoid":  # -softplus(-x), overflow-free
        return at.neg(_softplus(at, at.neg(x)))
    if name == "softsign":
        return op("div", x, op("add", num(1.0), f("abs", x)))
    if name == "softmin":
        return f("softmax", at.neg(x), axis=a["dim"])
    if name == "relu6":
        return clip(x, num(0.0), num(6.0))
    if name == "hardtanh":
        return clip(x, a["min_val"], a["max_val"])
    if name == "hardsigmoid":
        return op("div", clip(op("add", x, num(3.0)), num(0.0), num(6.0)), num(6.0))
    if name == "hardswish":
        return op("mul", x, op("div", clip(op("add", x, num(3.0)), num(0.0), num(6.0)),
                               num(6.0)))
    if name == "mish":  # x * tanh(softplus(x))
        return op("mul", x, f("tanh", _softplus(at, x)))
    if name == "softplus":  # x past the threshold (finite in both branches: so is the gradient)
        z = op("mul", x, a["beta"])
        return f("where", at.cmp(">", z, a["threshold"]), x,
                 op("div", _softplus(at, z), a["beta"]))
    if name == "masked_fill":
        return f("where", a["mask"], a["value"], x)
    if name == "clamp_min":
        return f("maximum", x, a["min"])
    if name == "clamp_max":
        return f("minimum", x, a["max"])
    if name == "reciprocal":
        return op("div", num(1.0), x)
    if name == "sign":  # 0 at 0 and at NaN, as torch.sign; in x's dtype
        s = f("where", positive(x), num(1), f("where", at.cmp("<", x, num(0)),
                                               num(-1), num(0)))
        return f("astype", s, x)
    if name == "lerp":
        return op("add", x, op("mul", a["weight"], op("sub", a["end"], x)))
    assert name == "log10"
    return op("div", f("log", x), num(math.log(10.0)))


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _softplus(at: At, z: ast.Expr) -> ast.Expr:
    """log(1 + exp(z)) without overflow: max(z, 0) + log1p(exp(-|z|))."""
    return at.op("add", at.f("maximum", z, at.num(0.0)),
                 at.f("log1p", at.f("exp", at.neg(at.f("abs", z)))))
