"""Rewrites of a fused linalg module that let LLVM vectorise it on the CPU (backends/mlir_cpu.py).

- Float arithmetic may be reassociated and contracted (`fastmath<reassoc,contract>`): without
  it LLVM keeps every reduction a scalar chain, one add after another, in source order.
- float32 `math.exp` becomes arithmetic (`_exp`): the JIT links libm's expf, a call per element
  that no loop around it can vectorise. math-expand-ops (run before) writes tanh, sinh and the
  like in terms of exp, so they take the same path.
- `math.log1p` and `math.expm1` become Kahan's forms, exact near 0 (MLIR lowers them as
  log(1 + x) and exp(x) - 1, which lose every digit of a tiny x).

exp is Cody-Waite range reduction with a degree-6 polynomial (Cephes' expf coefficients,
rel. error about 2 ulp over the float32 range); below the smallest denormal it gives 0,
above the largest +inf, denormal results are kept, and NaN stays NaN.
"""

from __future__ import annotations

from typing import Any

from torch_mlir import ir
from torch_mlir.dialects import arith
from torch_mlir.dialects import math as mmath

_FLOAT_OPS = {"arith.addf", "arith.subf", "arith.mulf", "arith.divf", "arith.maximumf",
              "arith.minimumf", "arith.negf"}
_HI, _LO = 88.72283905, -103.97208  # expf is +inf above _HI and 0 below _LO
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
         1.6666665459e-1, 5.0000001201e-1)
_ROUND = 12582912.0  # 1.5 * 2**23: adding and taking it away rounds to an integer


def vectorisable(module: ir.Module) -> None:
    """Rewrite the module in place (its context must be current)."""
    fast = ir.Attribute.parse("#arith.fastmath<reassoc,contract>")
    exps: list[Any] = []
    near_zero: list[Any] = []

    def visit(op: Any) -> Any:
        if op.name in _FLOAT_OPS:
            op.attributes["fastmath"] = fast
        elif op.name == "math.exp" and str(op.results[0].type) == "f32":
            exps.append(op)
        elif op.name in ("math.log1p", "math.expm1"):
            near_zero.append(op)
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    for op in exps:
        with ir.InsertionPoint(op), op.location:
            op.results[0].replace_all_uses_with(_exp(op.operands[0]))
        op.erase()
    for op in near_zero:  # after the walk: these ops must not be reassociated
        with ir.InsertionPoint(op), op.location:
            x = op.operands[0]
            op.results[0].replace_all_uses_with(
                _log1p(x) if op.name == "math.log1p" else _expm1(x))
        op.erase()


def _exp(x: Any) -> Any:
    f32, i32 = ir.F32Type.get(), ir.IntegerType.get_signless(32)

    def c(v: float) -> Any:
        return arith.constant(f32, v)

    xc = arith.maximumf(arith.minimumf(x, c(_HI)), c(_LO))
    t = arith.addf(arith.mulf(xc, c(1.4426950408889634)), c(_ROUND))
    k = arith.subf(t, c(_ROUND))  # round(x / ln 2); these two ops carry no reassoc flag
    r = arith.subf(arith.subf(xc, arith.mulf(k, c(_LN2_HI))), arith.mulf(k, c(_LN2_LO)))
    p = c(_POLY[0])
    for coeff in _POLY[1:]:
        p = mmath.fma(p, r, c(coeff))
    p = arith.addf(mmath.fma(p, arith.mulf(r, r), r), c(1.0))
    # 2**k in two factors, each a normal float over k's range [-150, 128]
    k1 = arith.fptosi(i32, k)
    k2 = arith.shrsi(k1, arith.constant(i32, 1))
    v = arith.mulf(arith.mulf(p, _pow2(arith.subi(k1, k2))), _pow2(k2))
    v = arith.select(arith.cmpf(arith.CmpFPredicate.OLT, x, c(_LO)), c(0.0), v)
    v = arith.select(arith.cmpf(arith.CmpFPredicate.OGT, x, c(_HI)), c(float("inf")), v)
    return arith.select(arith.cmpf(arith.CmpFPredicate.UNO, x, x), x, v)


def _log1p(x: Any) -> Any:
    """log(1 + x) exact near 0 (Kahan): log(u) * x / (u - 1) with u = 1 + x rounded, which
    cancels u's rounding error. MLIR's own lowering is log(1 + x): 0 for |x| < 6e-8 (f32).
    No reassoc flag on these ops: folding (1 + x) - 1 into x would undo the trick."""
    t = x.type
    one = arith.constant(t, 1.0)
    u = arith.addf(one, x)
    r = arith.mulf(mmath.log(u), arith.divf(x, arith.subf(u, one)))
    r = arith.select(arith.cmpf(arith.CmpFPredicate.OEQ, u, arith.constant(t, float("inf"))),
                     u, r)
    return arith.select(arith.cmpf(arith.CmpFPredicate.OEQ, u, one), x, r)


def _expm1(x: Any) -> Any:
    """exp(x) - 1 exact near 0 (Kahan): (u - 1) * x / log(u) with u = exp(x) rounded."""
    t = x.type
    one = arith.constant(t, 1.0)
    u = _exp(x) if str(t) == "f32" else mmath.exp(x)
    um1 = arith.subf(u, one)
    r = arith.divf(arith.mulf(um1, x), mmath.log(u))
    r = arith.select(arith.cmpf(arith.CmpFPredicate.OEQ, um1, arith.constant(t, -1.0)),
                     um1, r)
    r = arith.select(arith.cmpf(arith.CmpFPredicate.OEQ, u, arith.constant(t, float("inf"))),
                     u, r)
    return arith.select(arith.cmpf(arith.CmpFPredicate.OEQ, u, one), x, r)


def _pow2(k: Any) -> Any:
    """2**k for an i32 k in the normal range, from its exponent bits."""
    i32 = ir.IntegerType.get_signless(32)
    bits = arith.shli(arith.addi(k, arith.constant(i32, 127)), arith.constant(i32, 23))
    return arith.bitcast(ir.F32Type.get(), bits)
