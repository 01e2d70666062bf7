"""A contraction kernel in dot form -> a tiled tl.dot kernel with its prologue and epilogue.

One program computes a BLOCK_M x BLOCK_N tile of the result for one batch index. Programs are
ordered in groups of GROUP_M tile rows so neighbours share operand tiles in L2. The K loop
loads a tile of each operand in its own frame (left: [BLOCK_M, BLOCK_K], right:
[BLOCK_K, BLOCK_N]), runs the prologue the contraction's region computes on it (casts, scales),
and accumulates in float32 with tl.dot; the launch's num_stages pipelines the loads. After the
loop the epilogue (bias, activation, residual, scales, casts) runs on the accumulator tile
(frame [BLOCK_M, BLOCK_N]) and every output is stored once.

Operands go to tl.dot in the narrowest float type of the tensors they are computed from (bf16
and f16 products are exact in float32); float32 operands run at IEEE precision unless the user
opted into TF32 (FUSILE_TF32). The interpreter upcasts bf16 operands: it computes bf16 dots
wrongly.
"""

from __future__ import annotations

from collections.abc import Callable

from fusile.backends.triton.codegen import KernelWriter
from fusile.backends.triton.constexprs import DotConstexprs
from fusile.backends.triton.kernel_source import AttnInfo, DotInfo, KernelSource, TensorArg
from fusile.backends.triton.ops import TL_DTYPE
from fusile.backends.triton.scope import Scope
from fusile.dsl.errors import InternalError
from fusile.dsl.types import DTYPES, DType
from fusile.lowering.contraction import DotForm
from fusile.lowering.graph import Generic
from fusile.lowering.partition import Kernel, Plan

_FRAMES = {  # frame -> (row index, column index, row block, column block)
    "a": ("am", "ak", "BLOCK_M", "BLOCK_K"),
    "b": ("bk", "bn", "BLOCK_K", "BLOCK_N"),
    "c": ("cm", "cn", "BLOCK_M", "BLOCK_N"),
}
_ZERO_KEEPING = ("arith.extf", "arith.truncf", "arith.negf", "arith.divf")  # 0 stays 0


class DotWriter(KernelWriter):
    constexprs: tuple[str, ...] = DotConstexprs.names()

    def __init__(self, plan: Plan, kernel: Kernel, target: str, names: dict[int, str],
                 tf32: bool = False):
        assert kernel.dot is not None
        self.form: DotForm = kernel.dot
        self.tf32 = tf32
        self.prologue = False
        super().__init__(plan, kernel, target, names)

    # ------------------------------------------------------------------ classes and frames
    def _order_classes(self) -> None:
        d, lc = self.form, self.k.loop_class
        self.m, self.n, self.kc = lc[(d.gi, d.m)], lc[(d.gi, d.n)], lc[(d.gi, d.k)]
        self.batch = list(dict.fromkeys(lc[(d.gi, b)] for b in d.batch if (d.gi, b) in lc))
        order = [*self.batch, self.m, self.n, self.kc]
        if any(c not in order for c in self.k.domain):
            raise InternalError("a contraction kernel has loops outside its dot")
        self.classes = order
        self.p_classes, self.r_classes = [*self.batch, self.m, self.n], [self.kc]
        self.cname = {c: f"n{i}" for i, c in enumerate(order)}
        self.bidx = {c: f"b{i}" for i, c in enumerate(self.batch)}
        self.frame("c")

    def frame(self, f: str) -> None:
        """Switch the tile frame: a (left operand), b (right operand) or c (result)."""
        row, col, brow, bcol = _FRAMES[f]
        rc, cc = {"a": (self.m, self.kc), "b": (self.kc, self.n), "c": (self.m, self.n)}[f]
        self.set_frame(rc, cc, row, col, (brow, bcol), f"mask_{f}")

    def set_frame(self, rc: int, cc: int, row: str, col: str, blocks: tuple[str, str],
                  mask: str) -> None:
        """Tiles run class rc along rows (index `row`, mask `mask_<row>`) and cc along columns;
        `mask` masks both."""
        self.idx = dict(self.bidx) | {rc: row, cc: col}
        self.axis_of = {rc: "p", cc: "r"}
        self.blocks = blocks
        self.masks = {frozenset(): None, frozenset("p"): f"mask_{row}",
                      frozenset("r"): f"mask_{col}", frozenset("pr"): mask}

    # ------------------------------------------------------------------ operands
    def _contraction(self) -> Generic:
        return self._gen(self.form.gi)

    def _leaf_dtypes(self, t: int, seen: set[int]) -> list[DType]:
        """Float dtypes of the HBM tensors tensor t is computed from in this kernel."""
        if t in seen:
            return []
        seen.add(t)
        if t in self.producer:
            node = self._gen(self.producer[t])
            return [d for u in node.inputs for d in self._leaf_dtypes(u, seen)]
        d = self.g.tensors[t].dtype
        return [d] if d.is_float else []

    def _value_dtypes(self, gi: int, v: int) -> list[DType]:
        """The float dtypes of the HBM tensors value v of generic gi is computed from."""
        node = self._gen(gi)
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
        return DTYPES["f32"] if self.target == "interpreter" and dt.name == "bf16" else dt

    def precision(self, dt: DType) -> str:
        """tl.dot's input_precision argument for operands of type dt: float32 runs at IEEE
        precision unless the user opted into TF32."""
        if dt.name != "f32":
            return ""
        return ', input_precision="tf32"' if self.tf32 else ', input_precision="ieee"'

    def operand(self, form: DotForm, v: int, scope: Scope, dtype: str, kc: int) -> str:
        """Emit operand value v of form's region in the current frame and return a full tile
        of it in the dot's operand type, zero where the reduced class kc is past the end."""
        gi = form.gi
        node = self._gen(gi)
        by = node.defs
        n_in = len(node.inputs)
        local: dict[int, str] = {}
        zero: dict[int, bool] = {}  # value is 0 wherever k is past the end (masked loads)

        def val(x: int) -> str:
            if x in local:
                return local[x]
            if x in node.block_args[:n_in]:
                j = node.block_args.index(x)
                classes = self.k.access(gi, node.maps[j])
                local[x] = self.tensor_value(node.inputs[j], scope, False, classes)
                zero[x] = node.inputs[j] not in self.producer and kc in classes
                return local[x]
            op = by.get(x)
            if op is None:  # defined outside the region: a scalar
                return self.resolve(x, local, scope)
            if op.name == "linalg.index":
                local[x] = self._loop_index(gi, op.attrs["dim"])
                return local[x]
            if op.name not in _ZERO_KEEPING[:2]:  # more than a cast
                self.prologue = True
            var = local[x] = self.emit_op(op, [val(o) for o in op.operands], scope)
            z = [zero.get(o, False) for o in op.operands]
            zero[x] = (op.name in _ZERO_KEEPING and z[0]) or (op.name == "arith.mulf" and any(z))
            return var

        op = by.get(v)
        src = v
        if op is not None and op.name == "arith.extf" and by.get(op.operands[0]) is None and \
                TL_DTYPE[self._arg_dtype(gi, op.operands[0]).name] == dtype:
            src = op.operands[0]  # the loaded tile as is: no round trip through f32
        tile = val(src)
        rows, cols = self.blocks
        have = scope.axes_of(tile)
        if have is None:
            tile = f"tl.full([{rows}, {cols}], {tile}, tl.float32)"
        elif have != frozenset("pr"):
            tile = f"tl.broadcast_to({tile}, [{rows}, {cols}])"
        k_axis = "r" if self.axis_of.get(kc) == "r" else "p"
        if not zero.get(src, False):
            tile = f"tl.where({self.masks[frozenset(k_axis)]}, {tile}, 0.0)"
        return f"({tile}).to({dtype})"

    def batch_index(self, scope: Scope) -> None:
        """Each batch class's index from the flattened batch index `pid_b`."""
        rem = "pid_b"
        for c in reversed(self.batch):
            scope.emit(f"{self.bidx[c]} = {rem} % {self.cname[c]}")
            scope.emit(f"{rem}_{c} = {rem} // {self.cname[c]}")
            rem = f"{rem}_{c}"

    def _arg_dtype(self, gi: int, bid: int) -> DType:
        node = self._gen(gi)
        if bid not in node.block_args[: len(node.inputs)]:
            return DTYPES["f32"]
        t = node.inputs[node.block_args.index(bid)]
        return self.g.tensors[t].dtype

    # ------------------------------------------------------------------ the kernel
    def write_dot(self, name: str, tensors: list[TensorArg]) -> list[str]:
        dt = self.runnable(self.dot_dtype(self.form))
        tl_dt = TL_DTYPE[dt.name]
        top = Scope.function()
        e = top.emit
        M, N, K = (self.cname[c] for c in (self.m, self.n, self.kc))
        self.program_id(top)
        e(f"tiles_m = ({M} + BLOCK_M - 1) // BLOCK_M")
        e(f"tiles_n = ({N} + BLOCK_N - 1) // BLOCK_N")
        e("pid_b = pid // (tiles_m * tiles_n)  # batch index, flattened")
        e("tile = pid % (tiles_m * tiles_n)")
        e("group = GROUP_M * tiles_n  # GROUP_M rows of tiles share their right operand in L2")
        e("first_m = (tile // group) * GROUP_M")
        e("rows = tl.minimum(tiles_m - first_m, GROUP_M)")
        e("pid_m = first_m + (tile % group) % rows")
        e("pid_n = (tile % group) // rows")
        self.batch_index(top)
        e("offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)")
        e("offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)")
        e("offs_k = tl.arange(0, BLOCK_K)")
        e("if USE_I64:")
        e("    offs_k = offs_k.to(tl.int64)")
        e(f"am = (offs_m % {M})[:, None]  # rows past the end wrap: loaded, never stored")
        e("mask_am = tl.full([BLOCK_M, 1], 1, tl.int1)")
        e(f"bn = (offs_n % {N})[None, :]")
        e("mask_bn = tl.full([1, BLOCK_N], 1, tl.int1)")
        e("acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)")
        e(f"for k0 in range(0, {K}, BLOCK_K):")
        loop_a = top.child(deeper=True)
        loop_a.emit("ak = k0 + offs_k[None, :]")
        loop_a.emit("if EVEN_K:  # no tail: unmasked loads")
        loop_a.emit("    mask_ak = tl.full([1, BLOCK_K], 1, tl.int1)")
        loop_a.emit("else:")
        loop_a.emit(f"    mask_ak = ak < {K}")
        loop_a.emit("mask_a = mask_am & mask_ak")
        for v, axes in (("am", "p"), ("ak", "r"), ("bk", "p"), ("bn", "r")):
            top.tile(v, frozenset(axes))
        self.frame("a")
        lhs = self.operand(self.form, self.form.lhs, loop_a, tl_dt, self.kc)
        loop_b = top.child(deeper=True)
        loop_b.emit("bk = k0 + offs_k[:, None]")
        loop_b.emit("if EVEN_K:")
        loop_b.emit("    mask_bk = tl.full([BLOCK_K, 1], 1, tl.int1)")
        loop_b.emit("else:")
        loop_b.emit(f"    mask_bk = bk < {K}")
        loop_b.emit("mask_b = mask_bk & mask_bn")
        self.frame("b")
        rhs = self.operand(self.form, self.form.rhs, loop_b, tl_dt, self.kc)
        loop_b.emit(f"acc = tl.dot({lhs}, {rhs}, acc{self.precision(dt)})")
        top.lines += loop_a.lines + loop_b.lines
        node = self._contraction()
        init = node.outputs[0]
        if init not in self.plan.fills or self.resolve(self.plan.fills[init], {}, top) not in (
                "0.0", "0"):
            raise InternalError("a dot accumulates into a non-zero init")
        for t in self.k.writes:
            if self.kc in self.access_of(t):
                raise InternalError("a contraction kernel stores a per-k tensor")
        # the epilogue runs on each half of the tile in turn: half the live registers
        e("acc = tl.permute(tl.reshape(acc, [BLOCK_M, 2, BLOCK_N // 2]), [0, 2, 1])")
        e("acc_0, acc_1 = tl.split(acc)  # columns [0, BLOCK_N/2) and [BLOCK_N/2, BLOCK_N)")
        self.frame("c")
        self.blocks = ("BLOCK_M", "BLOCK_N // 2")
        for half in (0, 1):
            out = top.child()
            out.emit(f"# epilogue, half {half} of the tile's columns")
            out.emit("cm = offs_m[:, None]")
            start = " + BLOCK_N // 2" if half else ""
            out.emit(f"cn = (pid_n * BLOCK_N{start} + tl.arange(0, BLOCK_N // 2))[None, :]")
            out.emit(f"mask_cm = cm < {M}")
            out.emit(f"mask_cn = cn < {N}")
            out.emit("mask_c = mask_cm & mask_cn")
            for v, axes in (("cm", "p"), ("cn", "r"), (f"acc_{half}", "pr")):
                out.tile(v, frozenset(axes))
            out.values[node.results[0]] = f"acc_{half}"
            for t in self.k.writes:
                self._store(t, out)
            top.lines += out.lines
        note = f" (tl.dot on {dt.name}{' tf32' if self.tf32 and dt.name == 'f32' else ''})"
        return self.header(name, tensors, False, note=note) + top.lines

    def source(self) -> KernelSource:
        return self._source(self.write_dot, self.m, self.n, self.kc, self.dot_dtype(self.form))

    def _source(self, write: Callable[[str, list[TensorArg]], list[str]], m: int, n: int,
                k: int, dtype: DType, attn: AttnInfo | None = None
                ) -> KernelSource:
        """Write the kernel (its scalar arguments collected as they are read) and describe it
        for the launcher."""
        name = f"fusile_k{self.k.index}"
        tensors = [self.tensor_arg(t, False) for t in self.k.reads] + [
            self.tensor_arg(t, True) for t in self.k.writes]
        lines = write(name, tensors)
        info = DotInfo(list(self.batch), m, n, k, dtype.name, self.prologue)
        return KernelSource(name, self.k.kind, self.k.index, self.with_scalars(lines), tensors,
                            self.classes, self.p_classes, self.r_classes, self.k.class_global,
                            list(self.scalars), dot=info, attn=attn)
