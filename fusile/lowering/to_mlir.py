"""Typed AST -> MLIR: one func.func of linalg / arith / math ops on tensors.

Each op carries the user's file:line:col as its location. Builtins are lowered by rules in the
`RULES` table (one function per builtin), composed from the Emitter's generic builders.
"""

from __future__ import annotations

import math as pymath
from collections.abc import Callable
from typing import Any

from torch_mlir import ir
from torch_mlir.dialects import arith, func
from torch_mlir.dialects import math as mmath

from fusile.dsl import ast
from fusile.dsl.builtins import BoundCall
from fusile.dsl.check import Typed
from fusile.dsl.errors import FusileError, LoweringError
from fusile.dsl.types import (
    DType,
    ScalarType,
    Sym,
    TensorType,
    ValueType,
    bool_,
    i64,
    result_dtype,
)
from fusile.lowering.emit import LV, SV, Emitter, cast, const_sv, constant, mlir_type

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
    "log1p": lambda v: mmath.Log1pOp(v).result, "floor": lambda v: mmath.FloorOp(v).result,
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
        return fops[op](a, b).result
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


# ----------------------------------------------------------------------------- the walker


class Lowerer:
    """Lowers one Typed body. Inlined @fused calls get a nested Lowerer over the same Emitter."""

    def __init__(self, typed: Typed, em: Emitter, scope: dict[str, Value]):
        self.t = typed
        self.em = em
        self.scope = scope

    def loc(self, node: ast.Node) -> ir.Location:
        src = self.t.source
        return ir.Location.file(src.filename, node.span.line + src.line_offset,
                                node.span.col + src.col_offset)

    def body(self) -> list[LV]:
        results: list[LV] = []
        for stmt in self.t.func.body:
            if isinstance(stmt, ast.Assign):
                value = stmt.value
                if isinstance(value, ast.TupleExpr):
                    vals = [self.expr(v) for v in value.items]
                else:
                    vals = self.multi(value)
                for name, val in zip(stmt.targets, vals, strict=True):
                    self.scope[name] = val
            else:
                for e in stmt.values:
                    for r in self.multi(e):
                        assert isinstance(r, LV)
                        results.append(r)
        return results

    def multi(self, e: ast.Expr) -> list[Value]:
        if isinstance(e, ast.Call) and id(e) in self.t.inlined:
            with self.loc(e):
                return list(self.inline(e))
        return [self.expr(e)]

    def expr(self, e: ast.Expr) -> Value:
        with self.loc(e):
            try:
                return self._expr(e)
            except FusileError:
                raise
            except Exception as exc:  # an internal failure: report it at the user's line
                raise LoweringError(f"internal error while lowering this expression: {exc!r}",
                                    e.span, self.t.source) from exc

    def _expr(self, e: ast.Expr) -> Value:
        if id(e) in self.t.consts:
            t = self.t.type_of(e)
            assert isinstance(t, ScalarType)
            return const_sv(self.t.consts[id(e)], t.dtype)
        if isinstance(e, ast.Name):
            return self.scope[e.id]
        if isinstance(e, ast.Call) and id(e) in self.t.inlined:
            (only,) = self.inline(e)
            return only
        if id(e) in self.t.builtins:
            bound = self.t.builtins[id(e)]
            args = [self.expr(a) for a in self.t.builtin_args[id(e)]]
            return RULES[bound.name](self, bound, args)
        if isinstance(e, ast.BinOp):
            return self.binop(e.op, self.expr(e.left), self.expr(e.right), self.t.type_of(e))
        if isinstance(e, ast.Compare):
            a, b = self.expr(e.left), self.expr(e.right)
            d = result_dtype([self.vtype(a), self.vtype(b)]).compute
            return self.pointwise([a, b], self.t.type_of(e), [d, d],
                                  lambda v: compare_scalar(e.op, v[0], v[1], d))
        if isinstance(e, ast.UnaryOp):
            return self.unary(e.op, self.expr(e.operand), self.t.type_of(e))
        if isinstance(e, ast.Subscript | ast.Attribute):
            x = self.expr(e.value)
            assert isinstance(x, LV)
            view = self.t.views[id(e)]
            dims = tuple(None if v is None else x.dims[v] for v in view)
            t = self.t.type_of(e)
            assert isinstance(t, TensorType)
            return LV(x.value, t, dims, x.elem)
        raise LoweringError(f"cannot lower {type(e).__name__}", e.span, self.t.source)

    def inline(self, e: ast.Call) -> list[Value]:
        callee, args = self.t.inlined[id(e)]
        scope: dict[str, Value] = {}
        for p, a in zip(callee.func.params, args, strict=True):
            if a is not None:
                scope[p.name] = self.expr(a)
            else:
                assert p.default is not None
                scope[p.name] = Lowerer(callee, self.em, {}).expr(p.default)
        return list(Lowerer(callee, self.em, scope).body())

    # ------------------------------------------------------------------ helpers for rules
    @staticmethod
    def vtype(v: Value) -> ValueType:
        return v.type if isinstance(v, LV) else ScalarType(v.dtype, True)

    def pointwise(self, operands: list[Value], out: ValueType, in_dtypes: list[DType],
                  body: Callable[[list[ir.Value]], ir.Value]) -> Value:
        """Elementwise op: a generic if any operand is a tensor, else a lazy scalar."""
        if isinstance(out, TensorType):
            return self.em.elementwise(operands, out, in_dtypes, body)
        scalars = [o for o in operands if isinstance(o, SV)]
        assert len(scalars) == len(operands)
        out_c = out.dtype.compute

        def build(d: DType) -> ir.Value:
            return cast(body([s.build(di) for s, di in zip(scalars, in_dtypes, strict=True)]),
                        out_c, d)

        return SV(out.dtype, build)

    def binop(self, op: str, a: Value, b: Value, out: ValueType) -> Value:
        if op == "matmul":
            raise AssertionError("matmul is a builtin call")
        d = out.dtype.compute
        if op == "pow" and isinstance(b, SV) and b.is_const:
            return self.pow_const(a, float(b.const), out)
        return self.pointwise([a, b], out, [d, d], lambda v: binary_scalar(op, v[0], v[1], d))

    def pow_const(self, a: Value, p: float, out: ValueType) -> Value:
        d = out.dtype.compute

        def body(v: list[ir.Value]) -> ir.Value:
            x = v[0]
            if p == 0.5:
                return mmath.SqrtOp(x).result
            if p == int(p) and abs(p) <= 4:
                acc = constant(1.0, d)
                for _ in range(int(abs(p))):
                    acc = arith.MulFOp(acc, x).result
                return arith.DivFOp(constant(1.0, d), acc).result if p < 0 else acc
            return mmath.PowFOp(x, constant(p, d)).result

        return self.pointwise([a], out, [d], body)

    def unary(self, op: str, a: Value, out: ValueType) -> Value:
        d = out.dtype.compute
        if op == "pos":
            return a
        if op == "neg":
            fn = ((lambda v: arith.NegFOp(v[0]).result) if d.is_float else
                  (lambda v: arith.SubIOp(constant(0, d), v[0]).result))
        else:  # invert
            fn = lambda v: arith.XOrIOp(v[0], constant(1 if d == bool_ else -1, d)).result  # noqa: E731
        return self.pointwise([a], out, [d], fn)

    def size_sv(self, x: LV, axes: tuple[int, ...]) -> SV:
        """The number of elements of x over `axes`, as a scalar."""
        count = 1
        syms: list[ir.Value] = []
        for i in axes:
            d = self.em.env.find(x.shape[i])
            if isinstance(d, Sym):
                syms.append(self.em.dim_value(d))
            else:
                count *= d
        if not syms:
            return const_sv(count, i64)

        def build(dt: DType) -> ir.Value:
            v = arith.IndexCastOp(mlir_type(i64), syms[0]).result
            for s in syms[1:]:
                v = arith.MulIOp(v, arith.IndexCastOp(mlir_type(i64), s).result).result
            if count != 1:
                v = arith.MulIOp(v, constant(count, i64)).result
            return cast(v, i64, dt)

        return SV(i64, build)


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
    return lo.pointwise(
        [s, n], s.type, [c, c],
        lambda v: arith.DivFOp(v[0], arith.SubFOp(v[1], constant(corr, c)).result).result)


def _shifted(lo: Lowerer, x: LV, axes: tuple[int, ...], d: DType) -> tuple[LV, LV]:
    """(m, x - m) with m the max over axes (keepdims); a row of -inf gets m = 0 (no NaN)."""
    c = d.compute
    x = _as_dtype(lo, x, d)
    m = lo.em.reduce(x, axes, True, d, "maximumf", -pymath.inf)
    safe = lo.pointwise([m], m.type, [c], lambda v: arith.SelectOp(
        compare_scalar("==", v[0], constant(-pymath.inf, c), c), constant(0.0, c), v[0]).result)
    assert isinstance(safe, LV)
    sh = lo.pointwise([x, safe], x.type, [c, c], lambda v: arith.SubFOp(v[0], v[1]).result)
    assert isinstance(sh, LV)
    return safe, sh


def _sum_exp(lo: Lowerer, sh: LV, axes: tuple[int, ...], keepdims: bool, d: DType) -> LV:
    return lo.em.reduce(sh, axes, keepdims, d, "addf", 0.0,
                        pre=lambda v: mmath.ExpOp(v).result)


@rule("softmax")
def _softmax(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    (x,) = args
    assert isinstance(x, LV)
    d = _out(lo, call).dtype
    c = d.compute
    _, sh = _shifted(lo, x, call.axes, d)
    s = _sum_exp(lo, sh, call.axes, True, d)
    return lo.pointwise([sh, s], sh.type, [c, c],
                        lambda v: arith.DivFOp(mmath.ExpOp(v[0]).result, v[1]).result)


@rule("log_softmax")
def _log_softmax(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    (x,) = args
    assert isinstance(x, LV)
    d = _out(lo, call).dtype
    c = d.compute
    _, sh = _shifted(lo, x, call.axes, d)
    s = _sum_exp(lo, sh, call.axes, True, d)
    return lo.pointwise([sh, s], sh.type, [c, c],
                        lambda v: arith.SubFOp(v[0], mmath.LogOp(v[1]).result).result)


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


@rule("size")
def _size(lo: Lowerer, call: BoundCall, args: list[Value]) -> Value:
    (x,) = args
    assert isinstance(x, LV)
    return lo.size_sv(x, call.axes)


def _out(lo: Lowerer, call: BoundCall) -> Any:
    from fusile.dsl import builtins

    return builtins.BUILTINS[call.name].infer(call, lo.em.env)


# ----------------------------------------------------------------------------- entry point


def _scalar_arg(arg: ir.Value, src: DType) -> Callable[[DType], ir.Value]:
    return lambda dt: cast(arg, src, dt)


def to_mlir(typed: Typed, name: str | None = None) -> ir.Module:
    """Emit the module for a checked top-level function (a fresh MLIR context per module)."""
    ctx = ir.Context()
    src = typed.source
    fdef = typed.func
    with ctx, ir.Location.file(src.filename, fdef.span.line + src.line_offset,
                               fdef.span.col + src.col_offset):
        module = ir.Module.create()
        em = Emitter(typed.env)
        arg_types: list[ir.Type] = []
        runtime: list[tuple[int, ValueType]] = []
        for i, (t, is_const) in enumerate(zip(typed.param_types, typed.param_is_const,
                                              strict=True)):
            if isinstance(t, TensorType):
                arg_types.append(em.storage_type(t.shape, t.dtype))
                runtime.append((i, t))
            elif isinstance(t, ScalarType) and not is_const:
                arg_types.append(mlir_type(t.dtype))
                runtime.append((i, t))
        res_types = [em.storage_type(t.shape, t.dtype) for t in typed.result_types]
        with ir.InsertionPoint(module.body):
            fn = func.FuncOp(name or fdef.name, ir.FunctionType.get(arg_types, res_types))
            em.entry = fn.add_entry_block()
        scope: dict[str, Value] = {}
        for (i, t), arg in zip(runtime, em.entry.arguments, strict=True):
            pname = fdef.params[i].name
            if isinstance(t, TensorType):
                scope[pname] = LV(arg, t, tuple(range(t.rank)), t.dtype)
                for axis, d in enumerate(t.shape):
                    d = typed.env.find(d)
                    if isinstance(d, Sym):
                        em.add_dim_source(d, arg, axis)
            else:
                scope[pname] = SV(t.dtype, _scalar_arg(arg, t.dtype))
        with ir.InsertionPoint(em.entry):
            lo = Lowerer(typed, em, scope)
            results = lo.body()
            outs = [em.materialize(r, t.dtype)
                    for r, t in zip(results, typed.result_types, strict=True)]
            func.ReturnOp(outs)
    return module
