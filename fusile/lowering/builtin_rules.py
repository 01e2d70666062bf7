"""Lowering rules for fusile's builtins: one function per builtin name, registered in RULES.

A rule receives the Lowerer (for its pointwise helper and the Emitter) and the bound call, and
returns the lowered value. Composite builtins (softmax, var, logsumexp) are built from the
Emitter's reductions and elementwise generics here.
"""

from __future__ import annotations

import math as pymath
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch_mlir import ir
from torch_mlir.dialects import arith
from torch_mlir.dialects import math as mmath

from fusile.dsl.builtins import BoundCall
from fusile.dsl.types import DType, TensorType, bool_
from fusile.lowering.emit import LV, SV, cast, constant

if TYPE_CHECKING:
    from fusile.lowering.to_mlir import Lowerer

Value = LV | SV
Rule = Callable[["Lowerer", BoundCall, list[Value]], Value]
RULES: dict[str, Rule] = {}


def rule(*names: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for n in names:
            RULES[n] = fn
        return fn

    return register


# ----------------------------------------------------------------------------- scalar ops

_FLOAT_UNARY: dict[str, Callable[[ir.Value], ir.Value]] = {
    "exp": lambda v: mmath.ExpOp(v).result, "exp2": lambda v: mmath.Exp2Op(v).result,
    "log": lambda v: mmath.LogOp(v).result, "log2": lambda v: mmath.Log2Op(v).result,
    "sqrt": lambda v: mmath.SqrtOp(v).result, "rsqrt": lambda v: mmath.RsqrtOp(v).result,
    "tanh": lambda v: mmath.TanhOp(v).result, "erf": lambda v: mmath.ErfOp(v).result,
    "sin": lambda v: mmath.SinOp(v).result, "cos": lambda v: mmath.CosOp(v).result,
    "log1p": lambda v: mmath.Log1pOp(v).result, "expm1": lambda v: mmath.ExpM1Op(v).result,
    "floor": lambda v: mmath.FloorOp(v).result,
    "ceil": lambda v: mmath.CeilOp(v).result,
}


def _sigmoid(v: ir.Value) -> ir.Value:
    t = v.type
    one = arith.ConstantOp(t, ir.FloatAttr.get(t, 1.0)).result
    e = mmath.ExpOp(arith.NegFOp(v).result).result
    return arith.DivFOp(one, arith.AddFOp(one, e).result).result


_FLOAT_UNARY["sigmoid"] = _sigmoid


def binary_scalar(op: str, a: ir.Value, b: ir.Value, d: DType) -> ir.Value:
    """a <op> b for scalars of compute dtype d."""
    if d.is_float:
        fops = {"add": arith.AddFOp, "sub": arith.SubFOp, "mul": arith.MulFOp,
                "div": arith.DivFOp, "maximum": arith.MaximumFOp, "minimum": arith.MinimumFOp,
                "pow": mmath.PowFOp}
        if op == "floordiv":
            return mmath.FloorOp(arith.DivFOp(a, b).result).result
        if op == "mod":  # torch.remainder: a - floor(a / b) * b, the sign of b
            q = mmath.FloorOp(arith.DivFOp(a, b).result).result
            return arith.SubFOp(a, arith.MulFOp(q, b).result).result
        return fops[op](a, b).result
    if op == "mod":
        return arith.SubIOp(a, arith.MulIOp(arith.FloorDivSIOp(a, b).result, b).result).result
    iops = {"add": arith.AddIOp, "sub": arith.SubIOp, "mul": arith.MulIOp,
            "floordiv": arith.FloorDivSIOp, "maximum": arith.MaxSIOp, "minimum": arith.MinSIOp,
            "and_": arith.AndIOp, "or_": arith.OrIOp, "xor": arith.XOrIOp}
    if d == bool_ and op in ("maximum", "minimum"):
        op = "or_" if op == "maximum" else "and_"
    return iops[op](a, b).result


_CMPF = {"<": "OLT", "<=": "OLE", ">": "OGT", ">=": "OGE", "==": "OEQ", "!=": "UNE"}
_CMPI = {"<": "slt", "<=": "sle", ">": "sgt", ">=": "sge", "==": "eq", "!=": "ne"}


def compare_scalar(op: str, a: ir.Value, b: ir.Value, d: DType) -> ir.Value:
    if d.is_float:
        return arith.CmpFOp(getattr(arith.CmpFPredicate, _CMPF[op]), a, b).result
    pred = _CMPI[op] if d != bool_ else _CMPI[op].replace("s", "u", 1)
    return arith.CmpIOp(getattr(arith.CmpIPredicate, pred), a, b).result


# ----------------------------------------------------------------------------- builtin rules


@rule(*_FLOAT_UNARY)
def _unary_math(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    out = _out(lo, call)
    d = out.dtype.compute
    return lo.pointwise(args, out, [d], lambda v: _FLOAT_UNARY[call.name](v[0]))


@rule("abs")
def _abs(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    out = _out(lo, call)
    d = out.dtype.compute
    fn = (lambda v: mmath.AbsFOp(v[0]).result) if d.is_float else (
        lambda v: mmath.AbsIOp(v[0]).result)
    return lo.pointwise(args, out, [d], fn)


@rule("maximum", "minimum")
def _minmax(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    out = _out(lo, call)
    d = out.dtype.compute
    return lo.pointwise(args, out, [d, d], lambda v: binary_scalar(call.name, v[0], v[1], d))


@rule("where")
def _where(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    out = _out(lo, call)
    d = out.dtype.compute
    return lo.pointwise(args, out, [bool_, d, d],
                        lambda v: arith.SelectOp(v[0], v[1], v[2]).result)


@rule("astype")
def _astype(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    out = _out(lo, call)
    src = call.values[0].dtype.compute
    dst: DType = call.options["dtype"]
    return lo.pointwise(args, out, [src], lambda v: cast(cast(v[0], src, dst), dst, dst.compute))


_REDUCE = {  # name -> (float combiner, int combiner, identity)
    "sum": ("addf", "addi", 0.0), "max": ("maximumf", "maxsi", -pymath.inf),
    "min": ("minimumf", "minsi", pymath.inf),
}


def _int_identity(name: str, d: DType) -> int:
    if name == "sum":
        return 0
    big = (1 << (d.bits - 1)) - 1
    return -big - 1 if name == "max" else big


@rule("sum", "max", "min")
def _reduce(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    (x,) = args
    assert isinstance(x, LV)
    out = _out(lo, call)
    fc, ic, ident = _REDUCE[call.name]
    d = out.dtype.compute
    combine, identity = (fc, ident) if d.is_float else (ic, _int_identity(call.name, d))
    x = _as_dtype(lo, x, out.dtype)
    return lo.em.reduce(x, call.axes, bool(call.options.get("keepdims")), out.dtype, combine,
                        identity)


def _as_dtype(lo: Lowerer, x: LV, d: DType) -> LV:
    if x.type.dtype.compute == d.compute:
        return x
    t = TensorType(d, x.shape)
    v = lo.em.elementwise([x], t, [d.compute], lambda v: v[0])
    assert isinstance(v, LV)
    return v


def _mean(lo: Lowerer, x: LV, axes: tuple[int, ...], keepdims: bool, d: DType) -> LV:
    x = _as_dtype(lo, x, d)
    s = lo.em.reduce(x, axes, keepdims, d, "addf", 0.0)
    n = lo.size_sv(x, axes)
    r = lo.pointwise([s, n], s.type, [d.compute] * 2, lambda v: arith.DivFOp(v[0], v[1]).result)
    assert isinstance(r, LV)
    return r


@rule("mean")
def _mean_rule(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    (x,) = args
    assert isinstance(x, LV)
    return _mean(lo, x, call.axes, bool(call.options.get("keepdims")), _out(lo, call).dtype)


@rule("var")
def _var(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    (x,) = args
    assert isinstance(x, LV)
    d = _out(lo, call).dtype
    c = d.compute
    x = _as_dtype(lo, x, d)
    m = _mean(lo, x, call.axes, True, d)
    diff = lo.pointwise([x, m], x.type, [c, c], lambda v: arith.SubFOp(v[0], v[1]).result)
    sq = lo.pointwise([diff], x.type, [c], lambda v: arith.MulFOp(v[0], v[0]).result)
    assert isinstance(sq, LV)
    s = lo.em.reduce(sq, call.axes, bool(call.options.get("keepdims")), d, "addf", 0.0)
    n = lo.size_sv(x, call.axes)
    corr = float(call.options.get("correction") or 0)

    def divide(v: list[ir.Value]) -> ir.Value:  # by max(N - correction, 0), as torch does
        dof = arith.MaximumFOp(arith.SubFOp(v[1], constant(corr, c)).result,
                               constant(0.0, c)).result
        return arith.DivFOp(v[0], dof).result

    return lo.pointwise([s, n], s.type, [c, c], divide)


def _shifted(lo: Lowerer, x: LV, axes: tuple[int, ...], d: DType) -> tuple[LV, LV]:
    """(m, x - m) with m the max over axes (keepdims), 0 where that max is infinite: a row of
    -inf gives no NaN, and logsumexp of a row holding +inf is inf (not inf - inf)."""
    c = d.compute
    x = _as_dtype(lo, x, d)
    m = lo.em.reduce(x, axes, True, d, "maximumf", -pymath.inf)
    safe = lo.pointwise([m], m.type, [c], lambda v: arith.SelectOp(
        compare_scalar("==", mmath.AbsFOp(v[0]).result, constant(pymath.inf, c), c),
        constant(0.0, c), v[0]).result)
    assert isinstance(safe, LV)
    sh = lo.pointwise([x, safe], x.type, [c, c], lambda v: arith.SubFOp(v[0], v[1]).result)
    assert isinstance(sh, LV)
    return safe, sh


def _sum_exp(lo: Lowerer, sh: LV, axes: tuple[int, ...], keepdims: bool, d: DType) -> LV:
    return lo.em.reduce(sh, axes, keepdims, d, "addf", 0.0,
                        pre=lambda v: mmath.ExpOp(v).result)


_NORMALIZED: dict[str, Callable[[ir.Value, ir.Value], ir.Value]] = {  # (x - max, sum exp)
    "softmax": lambda sh, s: arith.DivFOp(mmath.ExpOp(sh).result, s).result,
    "log_softmax": lambda sh, s: arith.SubFOp(sh, mmath.LogOp(s).result).result,
}


@rule("softmax", "log_softmax")
def _normalize(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    (x,) = args
    assert isinstance(x, LV)
    d = _out(lo, call).dtype
    c = d.compute
    _, sh = _shifted(lo, x, call.axes, d)
    s = _sum_exp(lo, sh, call.axes, True, d)
    final = _NORMALIZED[call.name]
    return lo.pointwise([sh, s], sh.type, [c, c], lambda v: final(v[0], v[1]))


@rule("logsumexp")
def _logsumexp(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    (x,) = args
    assert isinstance(x, LV)
    out = _out(lo, call)
    c = out.dtype.compute
    m, sh = _shifted(lo, x, call.axes, out.dtype)
    keep = bool(call.options.get("keepdims"))
    s = _sum_exp(lo, sh, call.axes, keep, out.dtype)
    if not keep:  # drop m's unit dims: a view, no copy
        m = LV(m.value, TensorType(m.type.dtype, s.shape),
               tuple(m.dims[i] for i in range(x.type.rank) if i not in call.axes), m.elem)
    return lo.pointwise([m, s], out, [c, c],
                        lambda v: arith.AddFOp(v[0], mmath.LogOp(v[1]).result).result)


@rule("matmul")
def _matmul(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    a, b = args
    assert isinstance(a, LV) and isinstance(b, LV)
    return lo.em.contraction(a, b, _out(lo, call))


@rule("arange")
def _arange(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    return lo.em.positions([call.options["n"]], 0)


@rule("index")
def _index(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    return lo.em.positions(_out(lo, call).shape, call.axes[0])


@rule("expand_as")
def _expand_as(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    out = _out(lo, call)
    d = out.dtype.compute
    return lo.pointwise(args[:1], out, [d], lambda v: v[0])


@rule("size")
def _size(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    (x,) = args
    assert isinstance(x, LV)
    return lo.size_sv(x, call.axes)


def _out(lo: Lowerer, call: BoundCall) -> Any:
    from fusile.dsl import builtins

    return builtins.BUILTINS[call.name].infer(call, lo.em.env)


