"""Lowering rules: one MLIR scalar op -> one Triton expression, per target family.

`RULES[op name](args, op, target)` returns Triton source. GPU targets use libdevice for
functions Triton's core lacks; the interpreter (CPU) cannot run libdevice, so it gets
formulas written with core ops instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fusile.dsl.types import DType
from fusile.lowering.graph import Op

TL_DTYPE = {"bf16": "tl.bfloat16", "f16": "tl.float16", "f32": "tl.float32",
            "f64": "tl.float64", "i32": "tl.int32", "i64": "tl.int64", "bool": "tl.int1"}


def acc_type(dtype: DType) -> str:
    """The Triton type a reduction accumulates `dtype` in across chunks or programs: its
    compute dtype (float32 for 16-bit floats, float64 kept float64)."""
    return TL_DTYPE[dtype.compute.name]


INF = 'float("inf")'


def shift(v: str) -> str:
    """softmax's shift for a running max v (lowering/online.py): v, or 0 where it is
    infinite (a row of -inf so far, or one holding +inf)."""
    return f"tl.where(tl.abs({v}) == {INF}, 0.0, {v})"


def unshifted(m: str, total: str) -> str:
    """The sum of exp(T - m) by the max m itself, from `total`, the sum by shift(m): NaN
    where m is infinite (-inf - -inf, inf - inf), else the same."""
    return f'tl.where(tl.abs({m}) == {INF}, float("nan"), {total})'


Rule = Callable[[list[str], Op, str], str]
RULES: dict[str, Rule] = {}


def rule(*names: str) -> Callable[[Rule], Rule]:
    def reg(fn: Rule) -> Rule:
        for n in names:
            RULES[n] = fn
        return fn

    return reg


def literal(value: object, dtype: DType) -> str:
    if dtype.kind == "b":
        return "True" if value else "False"
    if dtype.is_float:
        v = float(value)  # type: ignore[arg-type]
        if math.isnan(v):
            return 'float("nan")'
        if math.isinf(v):
            return 'float("inf")' if v > 0 else 'float("-inf")'
        return repr(v)
    return str(int(value))  # type: ignore[call-overload]


def _binop(sym: str) -> Rule:
    return lambda a, op, t: f"{a[0]} {sym} {a[1]}"


for _n, _s in [("arith.addf", "+"), ("arith.addi", "+"), ("arith.subf", "-"),
               ("arith.subi", "-"), ("arith.mulf", "*"), ("arith.muli", "*"),
               ("arith.divf", "/"), ("arith.andi", "&"), ("arith.ori", "|"),
               ("arith.xori", "^")]:
    RULES[_n] = _binop(_s)

_CMP = {"oeq": "==", "une": "!=", "olt": "<", "ole": "<=", "ogt": ">", "oge": ">=",
        "eq": "==", "ne": "!=", "slt": "<", "sle": "<=", "sgt": ">", "sge": ">=",
        "ult": "<", "ule": "<=", "ugt": ">", "uge": ">="}


@rule("arith.cmpf", "arith.cmpi")
def _cmp(a: list[str], op: Op, t: str) -> str:
    return f"{a[0]} {_CMP[op.attrs['predicate']]} {a[1]}"


@rule("arith.negf")
def _neg(a: list[str], op: Op, t: str) -> str:
    return f"-{a[0]}"


@rule("arith.maximumf", "arith.maxsi")
def _max(a: list[str], op: Op, t: str) -> str:
    nan = ", propagate_nan=tl.PropagateNan.ALL" if op.name == "arith.maximumf" else ""
    return f"tl.maximum({a[0]}, {a[1]}{nan})"


@rule("arith.minimumf", "arith.minsi")
def _min(a: list[str], op: Op, t: str) -> str:
    nan = ", propagate_nan=tl.PropagateNan.ALL" if op.name == "arith.minimumf" else ""
    return f"tl.minimum({a[0]}, {a[1]}{nan})"


@rule("arith.floordivsi")
def _floordiv(a: list[str], op: Op, t: str) -> str:
    q = f"({a[0]} // {a[1]})"
    return f"tl.where(({a[0]} % {a[1]} != 0) & (({a[0]} < 0) != ({a[1]} < 0)), {q} - 1, {q})"


@rule("arith.select")
def _select(a: list[str], op: Op, t: str) -> str:
    return f"tl.where({a[0]}, {a[1]}, {a[2]})"


@rule("arith.extf", "arith.truncf", "arith.sitofp", "arith.uitofp", "arith.fptosi",
      "arith.extsi", "arith.extui", "arith.trunci", "arith.index_cast")
def _cast(a: list[str], op: Op, t: str) -> str:
    # tl.cast, not .to(): the operand may be a scalar argument, a Python float in the
    # interpreter (a float64 tensor times a float parameter casts it)
    return f"tl.cast({a[0]}, {TL_DTYPE[op.dtype.name]})"


for _n, _f in [("math.exp", "tl.exp"), ("math.exp2", "tl.exp2"), ("math.log", "tl.log"),
               ("math.log2", "tl.log2"),
               ("math.rsqrt", "tl.rsqrt"), ("math.erf", "tl.erf"), ("math.sin", "tl.sin"),
               ("math.cos", "tl.cos"), ("math.floor", "tl.floor"), ("math.ceil", "tl.ceil"),
               ("math.absf", "tl.abs"), ("math.absi", "tl.abs")]:
    RULES[_n] = (lambda f: (lambda a, op, t: f"{f}({a[0]})"))(_f)


@rule("math.sqrt")
def _sqrt(a: list[str], op: Op, t: str) -> str:
    # correctly rounded: tl.sqrt_rn takes float32 only; tl.sqrt of float64 is sqrt.rn too
    return f"tl.sqrt_rn({a[0]})" if op.dtype.bits == 32 else f"tl.sqrt({a[0]})"


@rule("math.tanh")
def _tanh(a: list[str], op: Op, t: str) -> str:
    if t != "interpreter":
        return f"libdevice.tanh({a[0]})"
    x = a[0]  # interpreter: sign-symmetric form with a Taylor branch near 0
    e = f"tl.exp(-2.0 * tl.abs({x}))"
    big = f"tl.where({x} < 0, -1.0, 1.0) * (1.0 - {e}) / (1.0 + {e})"
    return f"tl.where(tl.abs({x}) < 1e-3, {x} - {x} * {x} * {x} / 3.0, {big})"


@rule("math.log1p")
def _log1p(a: list[str], op: Op, t: str) -> str:
    if t != "interpreter":
        return f"libdevice.log1p({a[0]})"
    # interpreter: Kahan's form, exact near 0 where log(1 + x) loses x's low digits
    x, u = a[0], f"(1.0 + {a[0]})"
    return _kahan(x, u, f"tl.log({u}) * {x} / ({u} - 1.0)")


@rule("math.expm1")
def _expm1(a: list[str], op: Op, t: str) -> str:
    if t != "interpreter":
        return f"libdevice.expm1({a[0]})"
    # interpreter: Kahan's form, (u - 1) * x / log(u) with u = exp(x); exact near 0
    x, u = a[0], f"tl.exp({a[0]})"
    return _kahan(x, u, f"tl.where({u} - 1.0 == -1.0, -1.0, ({u} - 1.0) * {x} / tl.log({u}))")


def _kahan(x: str, u: str, ratio: str) -> str:
    """Kahan's correction around u, the rounded 1 + x or exp(x): x itself where u rounded to
    1, u where it overflowed, else `ratio` (which divides u's rounding error out)."""
    return f"tl.where({u} == 1.0, {x}, tl.where({u} == float('inf'), {u}, {ratio}))"


@rule("math.powf")
def _pow(a: list[str], op: Op, t: str) -> str:
    if t != "interpreter":
        return f"libdevice.pow({a[0]}, {a[1]})"
    return f"tl.exp2({a[1]} * tl.log2({a[0]}))"


# reductions: combiner op -> (Triton reduction, identity for float, identity for int)
REDUCE = {
    "arith.addf": ("tl.sum", 0.0), "arith.addi": ("tl.sum", 0),
    "arith.maximumf": ("tl.max", -math.inf), "arith.minimumf": ("tl.min", math.inf),
    "arith.maxsi": ("tl.max", None), "arith.minsi": ("tl.min", None),
}


# float max/min reductions keep NaN (torch's amax/amin do); tl.max and tl.min drop it, so GPU
# kernels reduce with these combiners (one max.NaN / min.NaN instruction per step)
NAN_COMBINE = {"arith.maximumf": "_fusile_max_nan", "arith.minimumf": "_fusile_min_nan"}
NAN_COMBINE_SOURCE = "\n\n\n".join(
    f"@triton.jit\ndef {name}(a, b):\n"
    f"    return tl.{fn}(a, b, propagate_nan=tl.PropagateNan.ALL)"
    for fn, name in (("maximum", NAN_COMBINE["arith.maximumf"]),
                     ("minimum", NAN_COMBINE["arith.minimumf"])))


def int_identity(name: str, d: DType) -> int:
    big = (1 << (d.bits - 1)) - 1
    return -big - 1 if name == "arith.maxsi" else big
