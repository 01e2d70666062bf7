"""A contraction kernel in dot form -> a tiled tl.dot kernel with its prologue and epilogue.

One program computes a BLOCK_M x BLOCK_N tile of the result for one batch index. Programs are
ordered in groups of GROUP_M tile rows so neighbours share operand tiles in L2. The K loop
loads a tile of each operand in its own frame (left: [BLOCK_M, BLOCK_K], right:
[BLOCK_K, BLOCK_N]), runs the prologue the contraction's region computes on it (casts, scales),
and accumulates in float32 with tl.dot; the launch's num_stages pipelines the loads. After the
loop the epilogue (bias, activation, residual, scales, casts) runs on the accumulator tile
(frame [BLOCK_M, BLOCK_N]) and every output is stored once.

The operands' tiles and the type tl.dot runs them in come from codegen_tiled.DotOperands.
"""

from __future__ import annotations

from fusile.backends.triton.codegen_tiled import DotOperands, batch_index, tiled_source
from fusile.backends.triton.constexprs import DotConstexprs
from fusile.backends.triton.emitter import TileEmitter, mask
from fusile.backends.triton.kernel_source import KernelSource, TensorArg
from fusile.backends.triton.ops import TL_DTYPE
from fusile.backends.triton.scope import Scope
from fusile.dsl.errors import InternalError
from fusile.lowering.contraction import DotForm
from fusile.lowering.graph import Generic
from fusile.lowering.partition import Kernel, Plan

_FRAMES = {  # frame -> (row index, column index, row block, column block)
    "a": ("am", "ak", "BLOCK_M", "BLOCK_K"),
    "b": ("bk", "bn", "BLOCK_K", "BLOCK_N"),
    "c": ("cm", "cn", "BLOCK_M", "BLOCK_N"),
}


class DotWriter(TileEmitter):
    constexprs: tuple[str, ...] = DotConstexprs.names()

    def __init__(self, plan: Plan, kernel: Kernel, target: str, names: dict[int, str],
                 tf32: bool = False):
        assert kernel.dot is not None
        self.form: DotForm = kernel.dot
        self.dots = DotOperands(self, tf32)
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

    def _contraction(self) -> Generic:
        return self.gen(self.form.gi)

    # ------------------------------------------------------------------ the kernel
    def write_dot(self, name: str, tensors: list[TensorArg]) -> list[str]:
        dt = self.dots.runnable(self.dots.dot_dtype(self.form))
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
        batch_index(self, top)
        e("offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)")
        e("offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)")
        e("offs_k = tl.arange(0, BLOCK_K)")
        e("if USE_I64:")
        e("    offs_k = offs_k.to(tl.int64)")
        e(f"am = (offs_m % {M})[:, None]  # rows past the end wrap: loaded, never stored")
        e(mask("am", None, "[BLOCK_M, 1]"))
        e(f"bn = (offs_n % {N})[None, :]")
        e(mask("bn", None, "[1, BLOCK_N]"))
        e("acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)")
        e(f"for k0 in range(0, {K}, BLOCK_K):")
        loop_a = top.child(deeper=True)
        loop_a.emit("ak = k0 + offs_k[None, :]")
        loop_a.emit("if EVEN_K:  # no tail: unmasked loads")
        loop_a.emit("    " + mask("ak", None, "[1, BLOCK_K]"))
        loop_a.emit("else:")
        loop_a.emit("    " + mask("ak", K, "[1, BLOCK_K]"))
        loop_a.emit("mask_a = mask_am & mask_ak")
        for v, axes in (("am", "p"), ("ak", "r"), ("bk", "p"), ("bn", "r")):
            top.tile(v, frozenset(axes))
        self.frame("a")
        lhs = self.dots.operand(self.form, self.form.lhs, loop_a, tl_dt, self.kc)
        loop_b = top.child(deeper=True)
        loop_b.emit("bk = k0 + offs_k[:, None]")
        loop_b.emit("if EVEN_K:")
        loop_b.emit("    " + mask("bk", None, "[BLOCK_K, 1]"))
        loop_b.emit("else:")
        loop_b.emit("    " + mask("bk", K, "[BLOCK_K, 1]"))
        loop_b.emit("mask_b = mask_bk & mask_bn")
        self.frame("b")
        rhs = self.dots.operand(self.form, self.form.rhs, loop_b, tl_dt, self.kc)
        loop_b.emit(f"acc = tl.dot({lhs}, {rhs}, acc{self.dots.precision(dt)})")
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
            out.emit(mask("cm", M, "[BLOCK_M, 1]"))
            out.emit(mask("cn", N, "[1, BLOCK_N // 2]"))
            out.emit("mask_c = mask_cm & mask_cn")
            for v, axes in (("cm", "p"), ("cn", "r"), (f"acc_{half}", "pr")):
                out.tile(v, frozenset(axes))
            out.values[node.results[0]] = f"acc_{half}"
            for t in self.k.writes:
                self.store(t, out)
            top.lines += out.lines
        note = f" (tl.dot on {dt.name}{' tf32' if self.dots.tf32 and dt.name == 'f32' else ''})"
        return self.header(name, tensors, False, note=note) + top.lines

    def source(self) -> KernelSource:
        return tiled_source(self, self.dots, self.write_dot, self.m, self.n, self.kc,
                            self.dots.dot_dtype(self.form))
