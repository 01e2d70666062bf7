"""torch's losses as formulas over fusile's builtins, so a loss written as torch code fuses
(and differentiates) like the rest of the body: F.mse_loss, F.l1_loss, F.smooth_l1_loss,
F.binary_cross_entropy_with_logits (its overflow-free form), and over class indices on axis 1
F.cross_entropy (class weights, ignore_index, label smoothing: torch's definitions) and
F.nll_loss (of log-probabilities), each with reduction='mean' | 'sum' | 'none'. A target
outside [0, C) other than ignore_index is not checked here (torch raises): its row's loss is
the log-sum-exp alone. fusile.stdlib's cross_entropy checks its targets. Class weights take
(N, C) inputs (a weight broadcast over axis 1 of a wider input is not spelled)."""

from __future__ import annotations

from fusile.dsl import ast
from fusile.dsl.errors import BuiltinCallError, Span
from fusile.dsl.rewrite import At

_PARAMS: dict[str, tuple[str, ...]] = {
    "mse_loss": ("input", "target", "reduction"),
    "l1_loss": ("input", "target", "reduction"),
    "smooth_l1_loss": ("input", "target", "reduction", "beta"),
    "huber_loss": ("input", "target", "reduction", "delta"),
    "kl_div": ("input", "target", "reduction", "log_target"),
    "binary_cross_entropy_with_logits": ("input", "target", "reduction"),
    "cross_entropy": ("input", "target", "weight", "reduction", "ignore_index",
                      "label_smoothing"),
    "nll_loss": ("input", "target", "weight", "reduction", "ignore_index"),
}
_CLASSES = ("cross_entropy", "nll_loss")  # over class indices: a third positional weight
NAMES = tuple(_PARAMS)


def spelled(span: Span, name: str, args: list[ast.Expr], kwargs: dict[str, ast.Expr]
            ) -> ast.Expr:
    names = _PARAMS[name]
    positional = 3 if name in _CLASSES else 2
    if len(args) > positional or set(kwargs) - set(names):
        raise BuiltinCallError(f"{name}() takes (input, target, *, "
                               f"{', '.join(n + '=' for n in names[2:])})", span)
    a = dict(zip(names, args, strict=False)) | kwargs
    if "input" not in a or "target" not in a:
        raise BuiltinCallError(f"{name}() needs input and target", span)
    x, t = a["input"], a["target"]
    mode = a.get("reduction", ast.Str(span, "mean"))
    modes = ("mean", "sum", "none", "batchmean") if name == "kl_div" else ("mean", "sum", "none")
    if not isinstance(mode, ast.Str) or mode.value not in modes:
        raise BuiltinCallError(f"{name}(): reduction must be "
                               f"{', '.join(repr(m) for m in modes[:-1])} or {modes[-1]!r}",
                               span)

    at = At(span)
    num, op, f = at.num, at.op, at.f

    def reduce(v: ast.Expr) -> ast.Expr:
        return v if mode.value == "none" else f(mode.value, v)

    if name in _CLASSES:
        return _class_loss(at, name, x, t, a, mode.value)
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
    if name == "huber_loss":  # smooth_l1 times delta
        delta = a.get("delta", num(1.0))
        e = f("abs", d)
        return reduce(f("where", at.cmp("<", e, delta), op("mul", num(0.5), op("mul", d, d)),
                        op("mul", delta, op("sub", e, op("mul", num(0.5), delta)))))
    if name == "kl_div":  # target * (log target - input), 0 where target is 0 (xlogy)
        lt = a.get("log_target", ast.Const(span, False))
        if not isinstance(lt, ast.Const) or not isinstance(lt.value, bool):
            raise BuiltinCallError("kl_div(): log_target must be True or False", span)
        each = op("mul", f("exp", t), op("sub", t, x)) if lt.value else f(
            "where", at.cmp(">", t, num(0.0)),
            op("mul", t, op("sub", f("log", f("where", at.cmp(">", t, num(0.0)), t, num(1.0))), x)),
            num(0.0))
        if mode.value == "batchmean":  # the sum over the first axis's size
            return op("div", f("sum", each), f("size", x, num(0)))
        return reduce(each)
    assert name == "binary_cross_entropy_with_logits"  # max(x, 0) - x t + log(1 + e^-|x|)
    return reduce(op("add", op("sub", f("maximum", x, num(0.0)), op("mul", x, t)),
                     f("log1p", f("exp", at.neg(f("abs", x))))))


def _class_loss(at: At, name: str, x: ast.Expr, t: ast.Expr, a: dict[str, ast.Expr],
                mode: str) -> ast.Expr:
    """cross_entropy / nll_loss over class indices on axis 1, as torch defines them: row i's
    loss w[t_i] * -logp[i, t_i] (0 where t_i is ignore_index), and with label smoothing eps
    (cross_entropy) (1 - eps) * that + eps / C * -sum_c w_c logp[i, c]; a mean divides the
    sums by the ignored-free rows' weight sum (their count without weights)."""
    num, op, f = at.num, at.op, at.f
    span = at.span
    ignore = a.get("ignore_index", num(-100))
    w = a.get("weight")
    w = None if isinstance(w, ast.Const) and w.value is None else w
    eps = a.get("label_smoothing", num(0.0))
    smoothing = not (isinstance(eps, ast.Num) and eps.value == 0)
    label = ast.Subscript(span, t, (ast.Slice(span), ast.Const(span, None),
                                    ast.EllipsisLit(span)))  # t.unsqueeze(1)
    hit = at.cmp("==", f("index", x, num(1)), label)
    valid = at.cmp("!=", t, ignore)
    # -logp[i, t_i] = lse_i - x[i, t_i] (nll_loss: its input is logp, lse_i is 0)
    picked = f("sum", f("where", hit, x, num(0.0)), axis=num(1))
    lse = f("logsumexp", x, axis=num(1)) if name == "cross_entropy" else None
    nll = at.neg(picked) if lse is None else op("sub", lse, picked)
    wt = None if w is None else f("sum", f("where", hit, w, num(0.0)), axis=num(1))
    each = f("where", valid, nll if wt is None else op("mul", wt, nll), num(0.0))
    smooth = None
    if smoothing and lse is not None:  # -sum_c w_c logp[i, c] = lse_i sum_c w_c - sum_c w_c x_ic
        total = f("size", x, num(1)) if w is None else f("sum", w)
        wx = x if w is None else op("mul", x, w)
        smooth = f("where", valid, op("sub", op("mul", lse, total),
                                      f("sum", wx, axis=num(1))), num(0.0))

    def mix(a_: ast.Expr, b_: ast.Expr | None) -> ast.Expr:
        """(1 - eps) * a_ + eps / C * b_: the smoothed loss of nll terms a_, smooth ones b_."""
        if b_ is None:
            return a_
        return op("add", op("mul", op("sub", num(1.0), eps), a_),
                  op("mul", op("div", eps, f("size", x, num(1))), b_))

    if mode == "none":
        return mix(each, smooth)
    if mode == "sum":
        return mix(f("sum", each), None if smooth is None else f("sum", smooth))
    per_row = f("astype", valid, ast.Str(span, "f32")) if wt is None else \
        f("where", valid, wt, num(0.0))
    denom = f("sum", per_row)  # float32: exact past 256 rows
    loss = op("div", mix(f("sum", each), None if smooth is None else f("sum", smooth)), denom)
    return f("astype", loss, x)  # in x's dtype, as torch
