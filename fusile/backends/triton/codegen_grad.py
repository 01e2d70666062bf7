"""An attention backward kernel (lowering/attention_grad.py) -> one flash backward kernel.

One program keeps BLOCK_M positions of one side (keys for dk and dv, queries for dq) of one
batch index and loops over blocks of BLOCK_N positions of the other side. Per block it
recomputes each score tile with tl.dot (the operand of the kept side is loaded once, before
the loop), evaluates the cone (probabilities, score gradients: the DSL's elementwise code) on
the (kept, looped) tile, and accumulates each out dot: acc += cone tile @ operand tile. After
the loop the epilogue stores each result. No score-sized tensor leaves the chip.

Tiles of the looped side that a position mask zeroes everywhere are skipped: the loop bounds
come from the masks' affine conditions as in the forward (codegen_attn.py), solved for the
looped side. A tensor read by a score dot and by an out dot in transposed frames (k in
q @ k^T and in ds @ k) is loaded once and transposed in registers.

The cone tiles go to tl.dot in the 16-bit type of the other operand when there is one (as in
FlashAttention 2), accumulating in float32; float32 problems stay float32.

Index names: kept side `om`, looped side `ln`, head dims `h0`, `h1`, ...; `_r`/`_c` suffixes
are a tile's row and column index.
"""

from __future__ import annotations

from fusile.backends.triton.codegen_attn import end_mask, head_mask
from fusile.backends.triton.codegen_bounds import KeyBounds
from fusile.backends.triton.codegen_tiled import DotOperands, row_program, tiled_source
from fusile.backends.triton.constexprs import GradConstexprs
from fusile.backends.triton.emitter import TileEmitter, mask
from fusile.backends.triton.kernel_source import GradInfo, KernelSource, TensorArg
from fusile.backends.triton.ops import TL_DTYPE
from fusile.backends.triton.scope import Scope
from fusile.dsl.errors import InternalError
from fusile.dsl.types import DType
from fusile.lowering.attention_grad import GradForm
from fusile.lowering.contraction import DotForm
from fusile.lowering.partition import Kernel, Plan


class GradWriter(TileEmitter):
    def __init__(self, plan: Plan, kernel: Kernel, target: str, names: dict[int, str],
                 tf32: bool = False):
        assert kernel.grad is not None
        self.grad: GradForm = kernel.grad
        self.dots = DotOperands(self, tf32)
        super().__init__(plan, kernel, target, names)
        self.bounds = KeyBounds(self, self.keep, self.loop, self.batch)

    # ------------------------------------------------------------------ classes and frames
    def _order_classes(self) -> None:
        f, lc = self.grad, self.k.loop_class
        s0 = f.scores[0]
        try:
            ci, cj = lc[(s0.gi, s0.m)], lc[(s0.gi, s0.n)]
            self.keep, self.loop = (cj, ci) if f.loop_i else (ci, cj)
            heads = [lc[(s.gi, s.k)] for s in f.scores] + [lc[(o.gi, o.n)] for o in f.outs]
            ok = all(lc[(o.gi, o.m)] == self.keep and lc[(o.gi, o.k)] == self.loop
                     for o in f.outs) and all(
                {lc[(s.gi, s.m)], lc[(s.gi, s.n)]} == {ci, cj} for s in f.scores)
        except KeyError:  # a static size-1 axis among them
            ok = False
        if not ok:
            raise InternalError("attention backward loops do not line up")
        self.per_dot = tuple(heads)  # each dot's head class, score dots first
        self.heads = list(dict.fromkeys(heads))
        self.batch = list(dict.fromkeys(lc[(s0.gi, b)] for b in s0.batch if (s0.gi, b) in lc))
        order = [*self.batch, self.keep, self.loop, *self.heads]
        if any(c not in order for c in self.k.domain):
            raise InternalError("an attention backward kernel has other loops")
        self.classes = order
        self.p_classes, self.r_classes = [*self.batch, self.keep, *self.heads], [self.loop]
        self.cname = {c: f"n{i}" for i, c in enumerate(order)}
        self.bidx = {c: f"b{i}" for i, c in enumerate(self.batch)}
        self.base = {self.keep: "om", self.loop: "ln"} | {
            c: f"h{x}" for x, c in enumerate(self.heads)}
        self.block = {self.keep: "BLOCK_M", self.loop: "BLOCK_N"} | {
            c: f"BLOCK_H{x}" for x, c in enumerate(self.heads)}
        self.constexprs = GradConstexprs.names(block_h=len(self.heads))

    def enter(self, scope: Scope, rc: int, cc: int, full: bool = False) -> None:
        """Switch to the (rc rows, cc columns) frame, emitting its index tiles into scope.
        `full`: a looped block every kept position sees whole (its mask is a constant)."""
        r, c = self.base[rc], self.base[cc]
        row, col = f"{r}_r", f"{c}_c"
        self.set_frame(rc, cc, row, col, (self.block[rc], self.block[cc]), f"mask_{r}{c}")
        if scope.get(("frame", rc, cc)) is not None:
            return
        for var, axis, shape in ((row, "p", "[:, None]"), (col, "r", "[None, :]")):
            if scope.get(("index", var)) is None:
                base = var[:-2]
                scope.emit(f"{var} = offs_{base}{shape}")
                cls = rc if axis == "p" else cc
                block = self.block[cls]
                ones = f"[{block}, 1]" if axis == "p" else f"[1, {block}]"
                if base == "ln" and full:  # a whole block: a constant mask folds away
                    scope.emit(mask(var, None, ones))
                elif base == "ln":
                    scope.emit(end_mask(var, self.cname[cls], ones))
                elif cls in self.heads:
                    scope.emit(head_mask(var, self.cname[cls], ones))
                else:
                    scope.emit(mask(var, self.cname[cls], ones))
                scope.tile(var, frozenset(axis))
                scope.values[("index", var)] = var
        scope.emit(f"mask_{r}{c} = mask_{row} & mask_{col}")
        scope.values[("frame", rc, cc)] = "1"

    # ------------------------------------------------------------------ the kernel
    def _dtype(self, form: DotForm, out: bool = False) -> DType:
        """tl.dot operand type: a score dot's own; an out dot's from its right operand (the
        cone's tile is rounded to it)."""
        dots = self.dots
        return dots.runnable(dots.rhs_dtype(form) if out else dots.dot_dtype(form))

    def write_grad(self, name: str, tensors: list[TensorArg]) -> list[str]:
        f, lc = self.grad, self.k.loop_class
        top = Scope.function()
        e = top.emit
        KEEP, LOOP = self.cname[self.keep], self.cname[self.loop]
        row_program(self, top, KEEP)
        e("offs_om = row0 + tl.arange(0, BLOCK_M)")
        for c in self.heads:
            e(f"offs_{self.base[c]} = tl.arange(0, {self.block[c]})")
        for x, s in enumerate(f.scores):  # the kept side's operand: loaded once
            kc = lc[(s.gi, s.k)]
            kept_lhs = lc[(s.gi, s.m)] == self.keep
            pre = top.child()
            self.enter(pre, self.keep, kc)
            a = self.dots.operand(s, s.lhs if kept_lhs else s.rhs, pre, TL_DTYPE[
                self._dtype(s).name], kc)
            pre.emit(f"a{x} = {a}")
            pre.tile(f"a{x}", frozenset("pr"))
            top.lines += pre.lines
        stages = self.bounds.loop_stages(top, f.masks, LOOP)
        for x, o in enumerate(f.outs):
            e(f"acc{x} = tl.full([BLOCK_M, {self.block[lc[(o.gi, o.n)]]}], 0.0, tl.float32)")
        e("offs_ln0 = tl.arange(0, BLOCK_N)")
        for start, stop, full in stages:
            why = "  # whole tiles: no masks" if full else "  # tiles a mask or the end cuts"
            e(f"for l0 in range({start}, {stop}, BLOCK_N):{why}")
            top.lines += self._grad_body(top, full)
        stored: set[int] = set()
        for x, o in enumerate(f.outs):
            nc = lc[(o.gi, o.n)]
            out = top.child()
            out.emit(f"# out dot {x}")
            self.enter(out, self.keep, nc)
            out.tile(f"acc{x}", frozenset("pr"))
            out.values[self.gen(o.gi).results[0]] = f"acc{x}"
            side = {*self.batch, self.keep, nc}
            for w in self.k.writes:
                if w not in stored and {c for c in self.access_of(w) if c is not None} <= side:
                    self.store(w, out)
                    stored.add(w)
            top.lines += out.lines
        if stored != set(self.k.writes):
            raise InternalError("an attention backward kernel stores a tensor over "
                               "both sides")
        kinds = ", ".join(self._dtype(o, True).name for o in f.outs)
        note = f" (flash backward over {'queries' if f.loop_i else 'keys'}: dots on {kinds})"
        return self.header(name, tensors, False, note=note) + top.lines

    def _grad_body(self, top: Scope, full: bool) -> list[str]:
        """One block of the looped side: the score tiles, the cone and each out dot's
        update. `full`: every kept position sees the whole block (no masks, no ragged end)."""
        with self.assuming({sel for _, sel in self.grad.masks} if full else set()):
            return self._grad_block(top, full)

    def _grad_block(self, top: Scope, full: bool) -> list[str]:
        f, lc = self.grad, self.k.loop_class
        body = top.child(deeper=True)
        body.emit("offs_ln = l0 + offs_ln0")
        loaded: dict[tuple[int, int], list[tuple[object, str]]] = {}  # frame -> full tiles
        for x, s in enumerate(f.scores):
            kc = lc[(s.gi, s.k)]
            kept_lhs = lc[(s.gi, s.m)] == self.keep
            bs = body.child()
            self.enter(bs, kc, self.loop, full)
            dt = self._dtype(s)
            b = self.dots.operand(s, s.rhs if kept_lhs else s.lhs, bs, TL_DTYPE[dt.name], kc)
            bs.emit(f"s{x} = tl.dot(a{x}, {b}{self.dots.precision(dt)})")
            loaded[(kc, self.loop)] = [
                (k, v) for k, v in bs.values.items() if isinstance(k, tuple) and
                isinstance(k[0], int) and bs.tiles.get(v) == frozenset("pr")]
            body.lines += bs.lines
            body.tile(f"s{x}", frozenset("pr"))
            body.values[self.gen(s.gi).results[0]] = f"s{x}"
        cone = body.child()
        lhs = []
        for o in f.outs:
            self.enter(cone, self.keep, self.loop, full)
            lhs.append(self.dots.operand(o, o.lhs, cone, TL_DTYPE[self._dtype(o, True).name],
                                    self.loop))
        body.lines += cone.lines
        for x, o in enumerate(f.outs):
            nc = lc[(o.gi, o.n)]
            rs = body.child()
            self.enter(rs, self.loop, nc, full)
            for key, var in loaded.get((nc, self.loop), []):
                rs.emit(f"{var}_t = tl.trans({var})  # loaded once, used in both frames")
                rs.values[key] = f"{var}_t"
                rs.tile(f"{var}_t", frozenset("pr"))
            dt = self._dtype(o, True)
            rhs = self.dots.operand(o, o.rhs, rs, TL_DTYPE[dt.name], self.loop)
            rs.emit(f"acc{x} = tl.dot({lhs[x]}, {rhs}, acc{x}{self.dots.precision(dt)})")
            body.lines += rs.lines
        return body.lines

    def source(self) -> KernelSource:
        ks = tiled_source(self, self.dots, self.write_grad, self.keep, self.loop,
                          self.heads[0], self._dtype(self.grad.scores[0]))
        ks.grad = GradInfo(tuple(self.heads), tuple(self.per_dot))
        return ks
