"""Derivative rules: one entry per operation, in one table.

A rule gets the builder, the primal node and the gradient of its result (already the result's
shape) and returns one gradient per argument: a node, or None where the argument gets none
(comparisons, positions, integer values). Gradients may be smaller than their argument and
broadcast to it; the sweep sums them over the axes the argument was broadcast along.

Rules are written as the textbook formulas, in terms of the primal values: autodiff decides
whether a value the rule reads is recomputed in the backward or saved by the forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from fusile.dsl.errors import DerivativeError

if TYPE_CHECKING:
    from fusile.lowering.autodiff import Build
    from fusile.lowering.trace import Node

Grads = list["Node | None"]
Rule = Callable[["Build", "Node", "Node"], Grads]
RULES: dict[str, Rule] = {}
# no gradient flows through these (their results are integers, booleans or steps)
NONDIFF = frozenset({"cmp", "index", "arange", "size", "floor", "ceil", "floordiv", "mod",
                     "and_", "or_", "xor", "lshift", "rshift", "invert"})


def rule(*names: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for n in names:
            RULES[n] = fn
        return fn

    return register


# ----------------------------------------------------------------------------- arithmetic


@rule("add")
def _add(b: Build, n: Node, g: Node) -> Grads:
    return [g, g]


@rule("sub")
def _sub(b: Build, n: Node, g: Node) -> Grads:
    return [g, b.ew("neg", g)]


@rule("neg")
def _neg(b: Build, n: Node, g: Node) -> Grads:
    return [b.ew("neg", g)]


@rule("mul")
def _mul(b: Build, n: Node, g: Node) -> Grads:
    x, y = n.args
    return [b.ew("mul", g, y), b.ew("mul", g, x)]


@rule("div")
def _div(b: Build, n: Node, g: Node) -> Grads:
    y = n.args[1]
    gx = b.ew("div", g, y)
    return [gx, b.ew("neg", b.ew("mul", gx, n))]  # d(x/y)/dy = -(x/y)/y


@rule("pow")
def _pow(b: Build, n: Node, g: Node) -> Grads:
    x, p = n.args
    if p.op == "const":
        c = float(p.attrs["value"])
        if c == 0:
            return [None, None]
        slope = b.ew("mul", b.const(c), b.ew("pow", x, b.const(c - 1)))
        return [b.ew("mul", g, slope), None]
    gx = b.ew("mul", g, b.ew("mul", p, b.ew("pow", x, b.ew("sub", p, b.const(1.0)))))
    return [gx, b.ew("mul", g, b.ew("mul", n, b.call("log", x)))]


# ----------------------------------------------------------------------------- math


def _times(b: Build, g: Node, slope: Node) -> Grads:
    return [b.ew("mul", g, slope)]


@rule("exp")
def _exp(b: Build, n: Node, g: Node) -> Grads:
    return _times(b, g, n)


@rule("exp2")
def _exp2(b: Build, n: Node, g: Node) -> Grads:
    return _times(b, g, b.ew("mul", n, b.const(math.log(2.0))))


@rule("log")
def _log(b: Build, n: Node, g: Node) -> Grads:
    return [b.ew("div", g, n.args[0])]


@rule("log2")
def _log2(b: Build, n: Node, g: Node) -> Grads:
    return [b.ew("div", g, b.ew("mul", n.args[0], b.const(math.log(2.0))))]


@rule("expm1")
def _expm1(b: Build, n: Node, g: Node) -> Grads:
    return [b.ew("mul", g, b.ew("add", n, b.const(1.0)))]  # exp(x) = expm1(x) + 1


@rule("log1p")
def _log1p(b: Build, n: Node, g: Node) -> Grads:
    return [b.ew("div", g, b.ew("add", n.args[0], b.const(1.0)))]


@rule("sqrt")
def _sqrt(b: Build, n: Node, g: Node) -> Grads:
    return [b.ew("div", b.ew("mul", g, b.const(0.5)), n)]


@rule("rsqrt")
def _rsqrt(b: Build, n: Node, g: Node) -> Grads:  # d x^-1/2 = -1/2 x^-3/2 = -1/2 y^3
    cube = b.ew("mul", b.ew("mul", n, n), n)
    return _times(b, g, b.ew("mul", cube, b.const(-0.5)))


@rule("tanh")
def _tanh(b: Build, n: Node, g: Node) -> Grads:
    return _times(b, g, b.ew("sub", b.const(1.0), b.ew("mul", n, n)))


@rule("sigmoid")
def _sigmoid(b: Build, n: Node, g: Node) -> Grads:
    return _times(b, g, b.ew("mul", n, b.ew("sub", b.const(1.0), n)))


@rule("erf")
def _erf(b: Build, n: Node, g: Node) -> Grads:
    x = n.args[0]
    bump = b.call("exp", b.ew("neg", b.ew("mul", x, x)))
    return _times(b, g, b.ew("mul", bump, b.const(2.0 / math.sqrt(math.pi))))


@rule("sin")
def _sin(b: Build, n: Node, g: Node) -> Grads:
    return _times(b, g, b.call("cos", n.args[0]))


@rule("cos")
def _cos(b: Build, n: Node, g: Node) -> Grads:
    return _times(b, g, b.ew("neg", b.call("sin", n.args[0])))


@rule("abs")
def _abs(b: Build, n: Node, g: Node) -> Grads:  # sign(x), 0 at 0 (as torch)
    x = n.args[0]
    zero = b.const(0.0)
    return [b.call("where", b.cmp(">", x, zero), g,
                   b.call("where", b.cmp("<", x, zero), b.ew("neg", g), zero))]


@rule("maximum", "minimum")
def _extremum(b: Build, n: Node, g: Node) -> Grads:  # ties share the gradient (as torch)
    x, y = n.args
    won = b.cmp(">" if n.op == "maximum" else "<", x, y)
    tie = b.cmp("==", x, y)
    half = b.ew("mul", g, b.const(0.5))
    zero = b.const(0.0)
    return [b.call("where", won, g, b.call("where", tie, half, zero)),
            b.call("where", won, zero, b.call("where", tie, half, g))]


@rule("where")
def _where(b: Build, n: Node, g: Node) -> Grads:
    cond = n.args[0]
    zero = b.const(0.0)
    return [None, b.call("where", cond, g, zero), b.call("where", cond, zero, g)]


@rule("astype")
def _astype(b: Build, n: Node, g: Node) -> Grads:
    return [g]


@rule("expand_as")
def _expand_as(b: Build, n: Node, g: Node) -> Grads:
    return [g, None]


@rule("view")
def _view(b: Build, n: Node, g: Node) -> Grads:
    dims = n.attrs["dims"]
    new = tuple(i for i, d in enumerate(dims) if d is None)
    if new:  # drop the axes the view added (each of size 1)
        g = b.reduce("sum", g, new, keepdims=False)
        dims = tuple(d for d in dims if d is not None)
    if list(dims) != sorted(dims):  # a permutation (.T, .mT, .transpose, .permute): undo it
        inverse = [0] * len(dims)
        for k, d in enumerate(dims):
            inverse[d] = k
        g = b.permute(g, tuple(inverse))
    return [g]


# ----------------------------------------------------------------------------- reductions


@rule("sum")
def _sum(b: Build, n: Node, g: Node) -> Grads:
    return [b.unreduce(g, n)]


@rule("mean")
def _mean(b: Build, n: Node, g: Node) -> Grads:
    return [b.ew("div", b.unreduce(g, n), b.count(n))]


@rule("max", "min")
def _max(b: Build, n: Node, g: Node) -> Grads:  # ties share the gradient (as torch.amax)
    x = n.args[0]
    hit = b.call("where", b.cmp("==", x, b.unreduce(n, n)), b.const(1.0), b.const(0.0))
    ties = b.reduce("sum", hit, n.attrs["axes"], keepdims=True)
    return [b.ew("mul", b.unreduce(g, n), b.ew("div", hit, ties))]


@rule("var")
def _var(b: Build, n: Node, g: Node) -> Grads:
    x = n.args[0]
    mu = b.reduce("mean", x, n.attrs["axes"], keepdims=True)
    dof = b.ew("sub", b.count(n), b.const(float(n.attrs["options"].get("correction", 0))))
    slope = b.ew("div", b.ew("mul", b.ew("sub", x, mu), b.const(2.0)), dof)
    return [b.ew("mul", b.unreduce(g, n), slope)]


@rule("logsumexp")
def _logsumexp(b: Build, n: Node, g: Node) -> Grads:
    x = n.args[0]
    return [b.ew("mul", b.unreduce(g, n), b.call("exp", b.ew("sub", x, b.unreduce(n, n))))]


@rule("softmax")
def _softmax(b: Build, n: Node, g: Node) -> Grads:
    axes = n.attrs["axes"]
    y = b.call("exp", b.ew("sub", n.args[0], b.lse(n)))  # the saved log-sum-exp, not a 2nd pass
    dot = b.reduce("sum", b.ew("mul", g, y), axes, keepdims=True)
    return [b.ew("mul", y, b.ew("sub", g, dot))]


@rule("log_softmax")
def _log_softmax(b: Build, n: Node, g: Node) -> Grads:
    axes = n.attrs["axes"]
    y = b.call("exp", b.ew("sub", n.args[0], b.lse(n)))
    return [b.ew("sub", g, b.ew("mul", y, b.reduce("sum", g, axes, keepdims=True)))]


@rule("matmul")
def _matmul(b: Build, n: Node, g: Node) -> Grads:
    x, y = n.args
    return [b.call("matmul", g, b.swap_last(y)), b.call("matmul", b.swap_last(x), g)]


def derivative(b: Build, n: Node, g: Node) -> Grads:
    """The gradients of n's arguments, given the gradient g of n."""
    if n.op in NONDIFF:
        return [None] * len(n.args)
    fn = RULES.get(n.op)
    if fn is None:
        raise DerivativeError(f"no derivative rule for {n.op}() yet", n.span, n.source)
    return fn(b, n, g)
