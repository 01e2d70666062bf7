"""Builders for the MLIR fusile emits: linalg.generic ops on tensors, with arith/math bodies.

Values are tracked as `LV` (a tensor plus a *view*: which storage dim each logical dim reads, or
None for a broadcast unit dim), so `x[:, None]`, keepdims and `.T` cost no copy: they become
indexing maps of the consumer. `SV` is a scalar built lazily inside whichever region uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch_mlir import ir
from torch_mlir.dialects import arith, linalg, tensor

from fusile.dsl.types import DType, ShapeEnv, Sym, TensorType, bool_, f32, f64, i32

DYN = ir.ShapedType.get_dynamic_size()


def mlir_type(d: DType) -> ir.Type:
    if d.kind == "f":
        return {16: ir.BF16Type.get() if d.name == "bf16" else ir.F16Type.get(),
                32: ir.F32Type.get(), 64: ir.F64Type.get()}[d.bits]
    return ir.IntegerType.get_signless(d.bits)


def cast(v: ir.Value, src: DType, dst: DType) -> ir.Value:
    """Convert a scalar SSA value between dtypes (inside a region or at function level)."""
    if src == dst:
        return v
    t = mlir_type(dst)
    if dst == bool_:
        zero = constant(0, src)
        if src.is_float:
            return arith.CmpFOp(arith.CmpFPredicate.UNE, v, zero).result
        return arith.CmpIOp(arith.CmpIPredicate.ne, v, zero).result
    if src.is_float and dst.is_float:
        return _float_resize(v, src, dst, t)
    if dst.is_float:
        return (arith.UIToFPOp(t, v) if src == bool_ else arith.SIToFPOp(t, v)).result
    if src.is_float:
        return arith.FPToSIOp(t, v).result
    if dst.bits > src.bits:
        return (arith.ExtUIOp(t, v) if src == bool_ else arith.ExtSIOp(t, v)).result
    return arith.TruncIOp(t, v).result


def _float_resize(v: ir.Value, src: DType, dst: DType, t: ir.Type) -> ir.Value:
    # bf16 <-> f16 goes through f32, and so does float64 to a 16-bit float, as torch rounds a
    # double (to float, then to half or bfloat16; a direct rounding differs in rare ties, the
    # Triton interpreter garbles it and MLIR's CPU JIT lacks its runtime helper)
    if src.bits == dst.bits or (src == f64 and dst.bits == 16):
        return cast(cast(v, src, f32), f32, dst)
    if dst.bits > src.bits:
        return arith.ExtFOp(t, v).result
    return arith.TruncFOp(t, v).result


def constant(value: Any, d: DType) -> ir.Value:
    t = mlir_type(d)
    if d.is_float:
        return arith.ConstantOp(t, ir.FloatAttr.get(t, float(value))).result
    return arith.ConstantOp(t, ir.IntegerAttr.get(t, int(value))).result


@dataclass
class LV:
    """A tensor value: MLIR storage plus a view onto it."""

    value: ir.Value
    type: TensorType  # logical dtype and shape
    dims: tuple[int | None, ...]  # logical dim -> storage dim, or None for a unit dim
    elem: DType  # element dtype of the storage

    @property
    def shape(self) -> tuple:
        return self.type.shape


@dataclass
class SV:
    """A scalar: `build(dtype)` emits it at the current insertion point, converted to dtype."""

    dtype: DType
    build: Callable[[DType], ir.Value]
    const: Any = None
    is_const: bool = False


def const_sv(value: Any, dtype: DType) -> SV:
    return SV(dtype, lambda d: constant(value, d), value, True)


Operand = LV | SV
Body = Callable[[list[ir.Value]], ir.Value]


class Emitter:
    """Emits ops into one func.func; knows how to get each symbolic dim's runtime size."""

    def __init__(self, env: ShapeEnv):
        self.env = env
        self.dim_sources: dict[Sym, tuple[ir.Value, int]] = {}
        self.dim_values: dict[Sym, ir.Value] = {}
        self.entry: ir.Block | None = None  # the function's entry block, set by to_mlir

    def add_dim_source(self, sym: Sym, tensor_value: ir.Value, axis: int) -> None:
        self.dim_sources.setdefault(sym, (tensor_value, axis))

    def dim_value(self, d: Any) -> ir.Value:
        """An index value holding the runtime size of symbolic dim d (made once, at entry)."""
        d = self.env.find(d)
        assert isinstance(d, Sym), d
        if d not in self.dim_values:
            src, axis = self.dim_sources[d]
            assert self.entry is not None
            with ir.InsertionPoint.at_block_begin(self.entry):
                c = arith.ConstantOp(ir.IndexType.get(), axis)
                self.dim_values[d] = tensor.DimOp(src, c.result).result
                c.operation.move_before(self.dim_values[d].owner)
        return self.dim_values[d]

    def storage_type(self, shape: Sequence[Any], d: DType) -> ir.RankedTensorType:
        dims = [self.env.find(s) for s in shape]
        return ir.RankedTensorType.get([s if isinstance(s, int) else DYN for s in dims],
                                       mlir_type(d))

    def empty(self, shape: Sequence[Any], d: DType) -> ir.Value:
        dims = [self.env.find(s) for s in shape]
        dyn = [self.dim_value(s) for s in dims if isinstance(s, Sym)]
        return tensor.EmptyOp.build_generic(results=[self.storage_type(dims, d)],
                                            operands=dyn).result

    # ------------------------------------------------------------------ generics
    def generic(self, inputs: list[LV], maps_in: list[ir.AffineMap], out: ir.Value,
                map_out: ir.AffineMap, iterators: list[str], in_dtypes: list[DType],
                out_elem: DType, body: Callable[[list[ir.Value], ir.Value], ir.Value]) -> ir.Value:
        attr = [ir.Attribute.parse(f"#linalg.iterator_type<{it}>") for it in iterators]
        maps = [ir.AffineMapAttr.get(m) for m in [*maps_in, map_out]]
        g = linalg.GenericOp([out.type], [x.value for x in inputs], [out], ir.ArrayAttr.get(maps),
                             ir.ArrayAttr.get(attr))
        block = g.regions[0].blocks.append(*[mlir_type(x.elem) for x in inputs],
                                           mlir_type(out_elem))
        with ir.InsertionPoint(block):
            args = [cast(a, x.elem, d) for a, x, d in
                    zip(block.arguments[:-1], inputs, in_dtypes, strict=True)]
            linalg.YieldOp([body(args, block.arguments[-1])])
        return g.result

    def operand_map(self, x: LV, result_shape: Sequence[Any], n_loops: int,
                    loop_of: Callable[[int], int]) -> ir.AffineMap:
        """Affine map from the loops to x's storage; loop_of(logical dim of x) -> loop index.

        A storage dim of static size 1 read where the loop is wider becomes the constant 0."""
        storage_rank = ir.RankedTensorType(x.value.type).rank
        exprs: list[ir.AffineExpr] = [ir.AffineConstantExpr.get(0)] * storage_rank
        for logical, sd in enumerate(x.dims):
            if sd is None:
                continue
            loop = loop_of(logical)
            if self.env.find(x.shape[logical]) == 1 and self.env.find(result_shape[loop]) != 1:
                exprs[sd] = ir.AffineConstantExpr.get(0)
            else:
                exprs[sd] = ir.AffineDimExpr.get(loop)
        return ir.AffineMap.get(n_loops, 0, exprs)

    def elementwise(self, operands: list[Operand], out: TensorType, in_dtypes: list[DType],
                    body: Body) -> LV:
        """One parallel generic over `out.shape`; tensors broadcast (numpy rules, right-aligned)."""
        shape = [self.env.find(d) for d in out.shape]
        r = len(shape)
        elem = out.dtype.compute
        tensors = [(o, d) for o, d in zip(operands, in_dtypes, strict=True) if isinstance(o, LV)]
        maps = [self.operand_map(x, shape, r, _right_aligned(r, x.type.rank)) for x, _ in tensors]
        init = self.empty(shape, elem)

        def region(args: list[ir.Value], _acc: ir.Value) -> ir.Value:
            it = iter(args)
            vals = [next(it) if isinstance(o, LV) else o.build(d)
                    for o, d in zip(operands, in_dtypes, strict=True)]
            return body(vals)

        v = self.generic([x for x, _ in tensors], maps, init, ir.AffineMap.get_identity(r),
                         ["parallel"] * r, [d for _, d in tensors], elem, region)
        return LV(v, TensorType(out.dtype, tuple(shape)), tuple(range(r)), elem)

    def reduce(self, x: LV, axes: tuple[int, ...], keepdims: bool, out_dtype: DType,
               combine: str, identity: float, pre: Callable[[ir.Value], ir.Value] | None = None
               ) -> LV:
        """Reduce x over `axes` with `combine` (addf, maximumf, minimumf, addi, maxsi, minsi)."""
        loops = [i for i in range(x.type.rank) if not (x.dims[i] is None and i in axes)]
        shape = [self.env.find(x.shape[i]) for i in loops]
        kept = [i for i in loops if i not in axes]
        elem = out_dtype.compute
        n = len(loops)
        in_map = self.operand_map(x, shape, n, loops.index)
        out_map = ir.AffineMap.get(n, 0, [ir.AffineDimExpr.get(loops.index(i)) for i in kept])
        out_shape = [self.env.find(x.shape[i]) for i in kept]
        init = self.fill(self.empty(out_shape, elem), identity, elem)

        reduces = any(i in axes for i in loops)

        def region(args: list[ir.Value], acc: ir.Value) -> ir.Value:
            v = pre(args[0]) if pre else args[0]
            # every reduced axis a broadcast (size 1, no loop): elementwise, not reading the
            # init. A parallel generic that reads its out, fused into a wider consumer, was
            # applied once per consumer column (sum(stack([x, x], axis=1), axis=1) + x)
            return _COMBINE[combine](v, acc if reduces else constant(identity, elem))

        v = self.generic([x], [in_map], init, out_map,
                         ["reduction" if i in axes else "parallel" for i in loops], [elem], elem,
                         region)
        logical = tuple(1 if i in axes else x.shape[i] for i in range(x.type.rank))
        if keepdims:
            dims: list[int | None] = []
            for i in range(x.type.rank):
                dims.append(None if i in axes else kept.index(i))
            return LV(v, TensorType(out_dtype, logical), tuple(dims), elem)
        shape_out = tuple(x.shape[i] for i in kept)
        return LV(v, TensorType(out_dtype, shape_out), tuple(range(len(kept))), elem)

    def fill(self, init: ir.Value, value: float, d: DType) -> ir.Value:
        return linalg.fill(constant(value, d), outs=[init])

    def contraction(self, a: LV, b: LV, out: TensorType) -> LV:
        """a[..., M, K] @ b[..., K, N] with float32 (or wider) accumulation."""
        acc = out.dtype.compute
        shape = [self.env.find(d) for d in out.shape]
        r = len(shape)
        plain = all(x.dims == tuple(range(x.type.rank)) and x.elem == a.elem for x in (a, b))
        init = self.fill(self.empty(shape, acc), 0, acc)
        if plain and a.type.rank == b.type.rank == 2:
            v = linalg.matmul(a.value, b.value, outs=[init])
            return LV(v, TensorType(out.dtype, tuple(shape)), tuple(range(r)), acc)
        n = r + 1  # loops: batch..., m, n, k
        k = r

        def loop_of(x: LV, is_a: bool) -> Callable[[int], int]:
            def f(i: int) -> int:
                rank = x.type.rank
                if i == rank - 1:
                    return k if is_a else r - 1
                if i == rank - 2:
                    return r - 2 if is_a else k
                return (r - 2) - (rank - 2) + i

            return f

        # K of size 1 broadcast in both operands (a keepdims reduction's axis): no loop reads
        # it, and linalg cannot size a loop no map names, so the product is elementwise
        unit_k = a.dims[-1] is None and b.dims[b.type.rank - 2] is None
        if unit_k:
            n = r
        ext_shape = [*shape, self.env.find(a.shape[-1])][:n]
        maps = [self.operand_map(a, ext_shape, n, loop_of(a, True)),
                self.operand_map(b, ext_shape, n, loop_of(b, False))]
        out_map = ir.AffineMap.get(n, 0, [ir.AffineDimExpr.get(i) for i in range(r)])

        def region(args: list[ir.Value], accv: ir.Value) -> ir.Value:
            prod = (arith.MulFOp if acc.is_float else arith.MulIOp)(args[0], args[1]).result
            if unit_k:  # not reading the init (see reduce: a parallel generic reading its out)
                return prod
            return (arith.AddFOp if acc.is_float else arith.AddIOp)(prod, accv).result

        v = self.generic([a, b], maps, init, out_map,
                         ["parallel"] * r + ([] if unit_k else ["reduction"]),
                         [acc, acc], acc, region)
        return LV(v, TensorType(out.dtype, tuple(shape)), tuple(range(r)), acc)

    def positions(self, shape: Sequence[Any], axis: int) -> LV:
        """int32 tensor of `shape` holding the position along `axis` (arange / index)."""
        shape = [self.env.find(d) for d in shape]
        r = len(shape)
        init = self.empty(shape, i32)

        def region(args: list[ir.Value], _acc: ir.Value) -> ir.Value:
            idx = linalg.IndexOp(ir.IntegerAttr.get(ir.IntegerType.get_signless(64), axis))
            return arith.IndexCastOp(mlir_type(i32), idx.result).result

        v = self.generic([], [], init, ir.AffineMap.get_identity(r), ["parallel"] * r, [], i32,
                         region)
        return LV(v, TensorType(i32, tuple(shape)), tuple(range(r)), i32)

    def materialize(self, x: LV, dtype: DType) -> ir.Value:
        """A plain tensor of x's logical shape and `dtype` (a function result)."""
        if x.dims == tuple(range(x.type.rank)) and x.elem == dtype:
            return x.value
        shape = [self.env.find(d) for d in x.shape]
        r = len(shape)
        in_map = self.operand_map(x, shape, r, lambda i: i)
        return self.generic([x], [in_map], self.empty(shape, dtype), ir.AffineMap.get_identity(r),
                            ["parallel"] * r, [x.elem], dtype,
                            lambda args, _acc: cast(args[0], x.elem, dtype))


def _right_aligned(n_loops: int, rank: int) -> Callable[[int], int]:
    return lambda i: n_loops - rank + i


_COMBINE: dict[str, Callable[[ir.Value, ir.Value], ir.Value]] = {
    "addf": lambda a, b: arith.AddFOp(a, b).result,
    "maximumf": lambda a, b: arith.MaximumFOp(a, b).result,
    "minimumf": lambda a, b: arith.MinimumFOp(a, b).result,
    "addi": lambda a, b: arith.AddIOp(a, b).result,
    "maxsi": lambda a, b: arith.MaxSIOp(a, b).result,
    "minsi": lambda a, b: arith.MinSIOp(a, b).result,
}

