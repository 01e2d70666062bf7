"""What the tiled writers (contractions, flash attention forward and backward) share, by
composition rather than by inheriting from each other: DotOperands (a dot's operand tile in
the writer's current frame, and the type tl.dot runs it in), the batch indices and the row
program of a tiled kernel, and its KernelSource.

Operands go to tl.dot in the narrowest float type of the tensors they are computed from (bf16
and f16 products are exact in float32); float32 operands run at IEEE precision unless the user
opted into TF32 (FUSILE_TF32). The interpreter upcasts bf16 operands: it computes bf16 dots
wrongly.
"""

from __future__ import annotations

from collections.abc import Callable

from fusile.backends.triton.emitter import TileEmitter
from fusile.backends.triton.kernel_source import AttnInfo, DotInfo, KernelSource, TensorArg
from fusile.backends.triton.ops import TL_DTYPE
from fusile.backends.triton.scope import Scope
from fusile.dsl.types import DTYPES, DType
from fusile.lowering.contraction import DotForm

_ZERO_KEEPING = ("arith.extf", "arith.truncf", "arith.negf", "arith.divf")  # 0 stays 0
L2_GROUP_BYTES = 16 << 20  # a third of the H100's 50 MB L2 (a quarter of MI300X's 256 MB LLC)


class DotOperands:
    """The operands of a writer's dots. `prologue` turns true once an operand is computed
    from its loads (more than a cast): the tuner's candidates differ for such kernels."""

    def __init__(self, w: TileEmitter, tf32: bool):
        self.w, self.tf32, self.prologue = w, tf32, False

    def _leaf_dtypes(self, t: int, seen: set[int]) -> list[DType]:
        """Float dtypes of the HBM tensors tensor t is computed from in this kernel."""
        w = self.w
        if t in seen:
            return []
        seen.add(t)
        if t in w.producer:
            node = w.gen(w.producer[t])
            return [d for u in node.inputs for d in self._leaf_dtypes(u, seen)]
        d = w.g.tensors[t].dtype
        return [d] if d.is_float else []

    def _value_dtypes(self, gi: int, v: int) -> list[DType]:
        """The float dtypes of the HBM tensors value v of generic gi is computed from."""
        node = self.w.gen(gi)
        args = node.args_of(v)
        return [d for bid, t in zip(node.block_args, node.inputs, strict=False) if bid in args
                for d in self._leaf_dtypes(t, set())]

    def dot_dtype(self, form: DotForm) -> DType:
        """The operand type of form's tl.dot: the one 16-bit float both operands come from,
        else float32."""
        dts = self._value_dtypes(form.gi, form.lhs) + self._value_dtypes(form.gi, form.rhs)
        if not dts or any(d.bits > 16 for d in dts) or len({d.name for d in dts}) > 1:
            return DTYPES["f32"]
        return dts[0]

    def rhs_dtype(self, form: DotForm) -> DType:
        """The operand type of a dot whose left operand is computed in float32 on chip
        (probabilities, score gradients): the 16-bit float the right operand comes from, to
        which the left tile is rounded (as in FlashAttention), else float32."""
        dts = self._value_dtypes(form.gi, form.rhs)
        if dts and all(d.bits == 16 and d.name == dts[0].name for d in dts):
            return dts[0]
        return DTYPES["f32"]

    def runnable(self, dt: DType) -> DType:
        """The tl.dot operand type to emit for dt: float32 for bf16 on the interpreter, whose
        bf16 dot is wrong (DESIGN.md, numerics)."""
        return DTYPES["f32"] if self.w.target == "interpreter" and dt.name == "bf16" else dt

    def precision(self, dt: DType) -> str:
        """tl.dot's input_precision argument for operands of type dt: float32 runs at IEEE
        precision unless the user opted into TF32."""
        if dt.name != "f32":
            return ""
        return ', input_precision="tf32"' if self.tf32 else ', input_precision="ieee"'

    def _arg_dtype(self, gi: int, bid: int) -> DType:
        node = self.w.gen(gi)
        if bid not in node.block_args[: len(node.inputs)]:
            return DTYPES["f32"]
        t = node.inputs[node.block_args.index(bid)]
        return self.w.g.tensors[t].dtype

    def operand(self, form: DotForm, v: int, scope: Scope, dtype: str, kc: int) -> str:
        """Emit operand value v of form's region in the writer's current frame and return a
        full tile of it in the dot's operand type, zero where the reduced class kc is past
        the end."""
        w = self.w
        gi = form.gi
        node = w.gen(gi)
        by = node.defs
        n_in = len(node.inputs)
        local: dict[int, str] = {}
        zero: dict[int, bool] = {}  # value is 0 wherever k is past the end (masked loads)

        def val(x: int) -> str:
            if x in local:
                return local[x]
            if x in node.block_args[:n_in]:
                j = node.block_args.index(x)
                classes = w.k.access(gi, node.maps[j])
                local[x] = w.tensor_value(node.inputs[j], scope, False, classes)
                zero[x] = node.inputs[j] not in w.producer and kc in classes
                return local[x]
            op = by.get(x)
            if op is None:  # defined outside the region: a scalar
                return w.resolve(x, local, scope)
            if op.name == "linalg.index":
                local[x] = w.loop_index(gi, op.attrs["dim"])
                return local[x]
            if op.name not in _ZERO_KEEPING[:2]:  # more than a cast
                self.prologue = True
            var = local[x] = w.emit_op(op, [val(o) for o in op.operands], scope)
            z = [zero.get(o, False) for o in op.operands]
            zero[x] = (op.name in _ZERO_KEEPING and z[0]) or (op.name == "arith.mulf" and any(z))
            return var

        op = by.get(v)
        src = v
        if op is not None and op.name == "arith.extf" and by.get(op.operands[0]) is None and \
                TL_DTYPE[self._arg_dtype(gi, op.operands[0]).name] == dtype:
            src = op.operands[0]  # the loaded tile as is: no round trip through f32
        tile = val(src)
        rows, cols = w.blocks
        have = scope.axes_of(tile)
        if have is None:
            tile = f"tl.full([{rows}, {cols}], {tile}, tl.float32)"
        elif have != frozenset("pr"):
            tile = f"tl.broadcast_to({tile}, [{rows}, {cols}])"
        k_axis = "r" if w.axis_of.get(kc) == "r" else "p"
        if not zero.get(src, False):
            tile = f"tl.where({w.masks[frozenset(k_axis)]}, {tile}, 0.0)"
        return f"({tile}).to({dtype})"


def batch_index(w: TileEmitter, scope: Scope) -> None:
    """Each batch class's index from the flattened batch index `pid_b`."""
    rem = "pid_b"
    for c in reversed(w.batch):
        scope.emit(f"{w.bidx[c]} = {rem} % {w.cname[c]}")
        scope.emit(f"{rem}_{c} = {rem} // {w.cname[c]}")
        rem = f"{rem}_{c}"


def row_program(w: TileEmitter, scope: Scope, rows: str, kv: tuple[str, str] | None = None
                ) -> None:
    """This program's batch indices and first row `row0`: one program per BLOCK_M of `rows`
    per batch index. With `kv` (the looped length, an expression for the bytes of K and V per
    looped position), programs go in groups of batch indices whose K and V fit
    L2_GROUP_BYTES, and within a group the last row blocks of every batch index come first:
    with a causal mask they see the most keys, so the last wave holds the shortest programs
    (+3-4% on causal rows at 2k-4k tokens on the H100, benchmarks/RESULTS.md)."""
    e = scope.emit
    w.program_id(scope)
    e(f"tiles_m = ({rows} + BLOCK_M - 1) // BLOCK_M")
    if kv is None:
        e("pid_b = pid // tiles_m  # batch index, flattened")
        e("pid_m = pid % tiles_m")
    else:
        length, per_key = kv
        e("n_b = tl.num_programs(0) // tiles_m  # batch indices, flattened")
        e(f"grp = tl.maximum(1, tl.minimum(n_b, {L2_GROUP_BYTES} // ({per_key}) // "
          f"tl.maximum({length}, 1)))  # K and V of grp batch indices fit L2")
        e("g0 = pid // (grp * tiles_m) * grp")
        e("gsz = tl.minimum(n_b - g0, grp)")
        e("rr = pid - g0 * tiles_m")
        e("pid_m = tiles_m - 1 - rr // gsz  # the longest row blocks of the group first")
        e("pid_b = g0 + rr % gsz")
    batch_index(w, scope)
    e("row0 = pid_m * BLOCK_M")


def tiled_source(w: TileEmitter, dots: DotOperands,
                 write: Callable[[str, list[TensorArg]], list[str]], m: int, n: int, k: int,
                 dtype: DType, attn: AttnInfo | None = None) -> KernelSource:
    """Write the kernel (its scalar arguments collected as they are read) and describe it
    for the launcher."""
    name = f"fusile_k{w.k.index}"
    tensors = [w.tensor_arg(t, False) for t in w.k.reads] + [
        w.tensor_arg(t, True) for t in w.k.writes]
    lines = write(name, tensors)
    info = DotInfo(list(w.batch), m, n, k, dtype.name, dots.prologue)
    return KernelSource(name, w.k.kind, w.k.index, w.with_scalars(lines), tensors, w.classes,
                        w.p_classes, w.r_classes, w.k.class_global, list(w.scalars), dot=info,
                        attn=attn)
