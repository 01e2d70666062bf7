"""An attention kernel (lowering/attention.py) -> one flash kernel with online softmax.

One program owns BLOCK_M query rows of one batch index (batch, heads, ...). It loads its q tile
once, then for each block of BLOCK_N keys: S = q @ k^T (tl.dot, float32 accumulation), the
DSL's score modifications on the S tile (scale, masks, soft-capping, biases: the mods
generics, emitted as written), a running row max and sum, P = exp(T - max), and
acc = acc * alpha + P @ v. After the loop: O = acc / sum, the epilogue, one store. S, T and P
live in registers only.

Masks that depend on positions alone also bound the key loop (codegen_bounds.py): key blocks
no row sees are never visited, and the masks are only computed on the tiles they cut. Under a
positive scale the masked and whole tiles share one loop, a branch on the tile choosing the
masked scores or s itself (no pipeline drain and refill between stages); otherwise they are
three loops. Without position masks only the ragged end cuts a tile; when BLOCK_N divides the
key length (EVEN_N) there is none, and the kernel is one loop over whole tiles.

Frames (tile axes): q (i, d), k (d, j), s (i, j), v (j, e), o (i, e).
"""

from __future__ import annotations

from fusile.backends.triton.codegen_bounds import KeyBounds
from fusile.backends.triton.codegen_decode import (
    PART_ARGS,
    chunk_stages,
    store_partials,
    write_combine,
)
from fusile.backends.triton.codegen_tiled import DotOperands, row_program, tiled_source
from fusile.backends.triton.constexprs import AttnConstexprs
from fusile.backends.triton.emitter import TileEmitter, mask
from fusile.backends.triton.kernel_source import AttnInfo, KernelSource, TensorArg
from fusile.backends.triton.ops import TL_DTYPE
from fusile.backends.triton.scope import Scope
from fusile.dsl.errors import InternalError
from fusile.dsl.types import DType
from fusile.lowering.attention import AttentionForm
from fusile.lowering.partition import Kernel, Plan

_FRAMES = {"q": ("qi", "qd", "BLOCK_M", "BLOCK_D"), "k": ("kd", "kj", "BLOCK_D", "BLOCK_N"),
           "s": ("si", "sj", "BLOCK_M", "BLOCK_N"), "v": ("vj", "ve", "BLOCK_N", "BLOCK_E"),
           "o": ("oi", "oe", "BLOCK_M", "BLOCK_E")}
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
_GUARD = "m_use = tl.where(m_new == float(\"-inf\"), 0.0, m_new)  # all -inf so far"


def end_mask(var: str, bound: str, shape: str) -> str:
    """The mask of a key index tile in a masked stage. EVEN_N (BLOCK_N divides the key length,
    set at launch) makes it a constant: the end is never cut, and only the score mask is left
    to compute on the diagonal tiles."""
    return mask(var, bound, shape, "EVEN_N")


def head_mask(var: str, bound: str, shape: str) -> str:
    """The mask of a head-dim index tile. EVEN_HEADS (every head dim is its power-of-two block,
    set at launch) makes it a constant, so the head-dim compares fold out of the loads: with
    them the whole-tile loop's K and V loads stay predicated (7-24% of forward throughput
    with 8 warps on the H100, benchmarks/RESULTS.md)."""
    return mask(var, bound, shape, "EVEN_HEADS")


class AttnWriter(TileEmitter):
    constexprs: tuple[str, ...] = AttnConstexprs.names()

    def __init__(self, plan: Plan, kernel: Kernel, target: str, names: dict[int, str],
                 tf32: bool = False):
        assert kernel.attn is not None
        self.attn: AttentionForm = kernel.attn
        self.dots = DotOperands(self, tf32)
        self.scale_op: int | None = None  # the `s * scale` op the base-2 factor folds into
        self.scale: tuple[str, str] | None = None  # its scale and sign (_scale_sign)
        self.scale_scalar: int | None = None  # a runtime scale: the launch tells its sign
        super().__init__(plan, kernel, target, names)
        self.bounds = KeyBounds(self, self.i, self.j, self.batch)

    def _order_classes(self) -> None:
        a, lc = self.attn, self.k.loop_class
        qk, pv = a.qk, a.pv
        try:
            self.i, self.j, self.d = (lc[(qk.gi, x)] for x in (qk.m, qk.n, qk.k))
            self.e = lc[(pv.gi, pv.n)]
            linked = lc[(pv.gi, pv.m)] == self.i and lc[(pv.gi, pv.k)] == self.j
        except KeyError:  # a static size-1 axis among them
            linked = False
        if not linked:
            raise InternalError("attention loops do not line up (size-1 axes?)")
        self.batch = list(dict.fromkeys(lc[(qk.gi, b)] for b in qk.batch if (qk.gi, b) in lc))
        order = [*self.batch, self.i, self.j, self.d, self.e]
        if any(c not in order for c in self.k.domain):
            raise InternalError("an attention kernel has loops outside q, k, v")
        self.classes = order
        self.p_classes, self.r_classes = [*self.batch, self.i, self.e], [self.j, self.d]
        self.cname = {c: f"n{i}" for i, c in enumerate(order)}
        self.bidx = {c: f"b{i}" for i, c in enumerate(self.batch)}
        self.frame("o")

    def frame(self, f: str) -> None:
        row, col, brow, bcol = _FRAMES[f]
        rc, cc = {"q": (self.i, self.d), "k": (self.d, self.j), "s": (self.i, self.j),
                  "v": (self.j, self.e), "o": (self.i, self.e)}[f]
        self.set_frame(rc, cc, row, col, (brow, bcol), f"mask_{f}")

    def _scale_sign(self, scale_op: int | None) -> tuple[str, str] | None:
        """(the scale's Triton name, what its sign is: "pos" (positive), "neg" (not) or
        "POS_SCALE", a constexpr the launch sets) for the `s * scale` op, or None."""
        if scale_op is None:
            return None
        node = self.gen(self.attn.mods[0])
        op = next(o for o in node.body if o.results and o.results[0] == scale_op)
        s_arg = node.block_args[node.inputs.index(self.gen(self.attn.qk.gi).results[0])]
        c = next(o for o in op.operands if o != s_arg)
        const = self.func_ops.get(c)
        if const is not None and const.name == "arith.constant":
            return self.resolve(c, {}, Scope.scratch()), \
                "pos" if float(const.attrs["value"]) > 0 else "neg"
        self.scale_scalar = c
        return self.resolve(c, {}, Scope.scratch()), "POS_SCALE"

    def _log2_scale(self) -> int | None:
        """The `s * scale` op of the score modifications when the scores are that product,
        masked or not: the online softmax then runs in base 2 with scale * log2(e) folded
        into that one multiply."""
        a = self.attn
        if len(a.mods) != 1:
            return None
        node = self.gen(a.mods[0])
        s_t = self.gen(a.qk.gi).results[0]
        if s_t not in node.inputs:
            return None
        s_arg = node.block_args[node.inputs.index(s_t)]
        users: dict[int, list] = {}
        for op in node.body:
            for o in op.operands:
                users.setdefault(o, []).append(op)
        inside = set(node.block_args) | {r for op in node.body for r in op.results}
        mul = next((op for op in users.get(s_arg, []) if op.name == "arith.mulf"), None)
        if mul is None or len(users.get(s_arg, [])) != 1 or \
                any(o in inside for o in mul.operands if o != s_arg):
            return None
        masks = {sel for _, sel in a.masks}
        v = mul.results[0]
        while v != node.yields[0]:
            use = users.get(v, [])
            if len(use) != 1 or use[0].results[0] not in masks or use[0].operands[1] != v:
                return None
            v = use[0].results[0]
        return mul.results[0]

    # ------------------------------------------------------------------ the kernel
    def write_attn(self, name: str, tensors: list[TensorArg], part: bool = False
                   ) -> list[str]:
        """The flash kernel; with `part`, its split-key variant (flash-decoding, see
        codegen_decode.py): program (pid, sid) covers keys [sid * S_CHUNK, + S_CHUNK) of its
        row block and stores its running max, sum and unnormalised accumulator."""
        a = self.attn
        dots = self.dots
        qk_dt, pv_dt = dots.runnable(dots.dot_dtype(a.qk)), dots.runnable(dots.rhs_dtype(a.pv))
        top = Scope.function()
        e = top.emit
        LI, LJ, D, E = (self.cname[c] for c in (self.i, self.j, self.d, self.e))
        kv_bytes = f"BLOCK_D * {qk_dt.bits // 8} + BLOCK_E * {pv_dt.bits // 8}"
        row_program(self, top, LI, None if part else (LJ, kv_bytes))
        e("offs_m = row0 + tl.arange(0, BLOCK_M)")
        e("offs_n = tl.arange(0, BLOCK_N)")
        e("offs_d = tl.arange(0, BLOCK_D)")
        e("offs_e = tl.arange(0, BLOCK_E)")
        for line in ("qi = offs_m[:, None]", "qd = offs_d[None, :]", mask("qi", LI, "[BLOCK_M, 1]"),
                     head_mask("qd", D, "[1, BLOCK_D]"), "mask_q = mask_qi & mask_qd",
                     "si = offs_m[:, None]", mask("si", LI, "[BLOCK_M, 1]"),
                     "kd = offs_d[:, None]", head_mask("kd", D, "[BLOCK_D, 1]"),
                     "ve = offs_e[None, :]", head_mask("ve", E, "[1, BLOCK_E]")):
            e(line)
        for v, ax in (("qi", "p"), ("qd", "r"), ("si", "p"), ("kd", "p"), ("ve", "r")):
            top.tile(v, frozenset(ax))
        self.frame("q")
        q = self.dots.operand(a.qk, a.qk.lhs, top, TL_DTYPE[qk_dt.name], self.d)
        e(f"q = {q}")
        top.tile("q", frozenset("pr"))
        stages = self.bounds.loop_stages(top, a.masks, LJ)
        if part:
            chunk_stages(top, stages)
        e("m_i = tl.full([BLOCK_M, 1], float(\"-inf\"), tl.float32)  # running max, base 2")
        e("l_i = tl.full([BLOCK_M, 1], 0.0, tl.float32)")
        e("acc = tl.full([BLOCK_M, BLOCK_E], 0.0, tl.float32)")
        mode = {"pos": "folded", "POS_SCALE": "either"}.get(self.scale[1] if self.scale
                                                           else "", "general")
        staged = [(lo, hi, "whole" if full else "masked") for lo, hi, full in stages]
        if not a.masks and len(stages) > 1:  # only the end cuts tiles
            self._either(top, "EVEN_N:  # no tile cut: one loop, whose end masks fold away",
                         self._loops(top, [("lo", "hi", "every")], mode, qk_dt, pv_dt, LJ),
                         self._loops(top, staged, mode, qk_dt, pv_dt, LJ))
        elif len(stages) == 1 or mode == "general" or self._scores_read_memory(a.scores):
            top.lines += self._loops(top, staged, mode, qk_dt, pv_dt, LJ)
        else:  # position masks, selecting on s: one loop, no pipeline drain between stages
            split = self._loops(top, [("lo", "hi", "split")], "folded", qk_dt, pv_dt, LJ)
            if mode == "folded":
                top.lines += split
            else:
                self._either(top, "POS_SCALE:  # the scale is positive (the launch checks)",
                             split, self._loops(top, staged, "general", qk_dt, pv_dt, LJ))
        note = f" (flash: q @ k^T on {qk_dt.name}, p @ v on {pv_dt.name})"
        if part:
            store_partials(top)
            return self.header(name, tensors, False, PART_ARGS,
                               note + " (split keys: partials)") + top.lines
        self.epilogue(top)
        return self.header(name, tensors, False, note=note) + top.lines

    def epilogue(self, top: Scope) -> None:
        """O = acc / l_i and what the kernel stores of it and of the row statistics (m_i in
        base 2, l_i), over the row block's rows (offs_m) and value dims (offs_e)."""
        a = self.attn
        LI, LJ, E = self.cname[self.i], self.cname[self.j], self.cname[self.e]
        out = top.child()
        self.frame("o")
        for line in ("oi = offs_m[:, None]", "oe = offs_e[None, :]", mask("oi", LI, "[BLOCK_M, 1]"),
                     head_mask("oe", E, "[1, BLOCK_E]"), "mask_o = mask_oi & mask_oe",
                     "l_i = tl.where(mask_oi, l_i, 1.0)  # rows past the end: no 0 / 0",
                     # no keys at all: 0, as torch's matmul over the empty key axis (a row
                     # whose keys are all masked stays 0 / 0 = NaN, as torch's softmax)
                     f"o = acc / tl.where({LJ} > 0, l_i, 1.0)"):
            out.emit(line)
        for v, ax in (("oi", "p"), ("oe", "r"), ("o", "pr"), ("m_i", "p"), ("l_i", "p")):
            out.tile(v, frozenset(ax))
        out.values[self.gen(a.pv.gi).results[0]] = "o"
        out.emit(f"m_nat = m_i * {LN2}  # the max in natural units")
        out.tile("m_nat", frozenset("p"))
        out.values[self.gen(a.row_max).results[0]] = "m_nat"  # the statistics, for epilogues
        out.values[self.gen(a.row_sum).results[0]] = "l_i"  # such as a log-sum-exp output
        for w in self.k.writes:
            if self.j in self.access_of(w) or self.d in self.access_of(w):
                raise InternalError("an attention kernel stores a per-key tensor")
            self.store(w, out)
        top.lines += out.lines

    @staticmethod
    def _either(top: Scope, cond: str, then: list[str], other: list[str]) -> None:
        """`if cond` over the lines `then`, else `other` (both one level in)."""
        top.emit(f"if {cond}")
        top.lines += ["    " + line for line in then]
        top.emit("else:")
        top.lines += ["    " + line for line in other]

    def _loops(self, top: Scope, loops: list[tuple[str, str, str]], mode: str, qk_dt: DType,
               pv_dt: DType, LJ: str) -> list[str]:
        """The key loops (start, stop, kind of tile; see _attn_body) and their bodies."""
        why = {"whole": "whole tiles: no masks", "masked": "tiles a mask or the end cuts",
               "split": "masked tiles at the ends, whole ones between",
               "every": "every tile, the end masks folded away"}
        lines = []
        for start, stop, kind in loops:
            lines.append(f"    for j0 in range({start}, {stop}, BLOCK_N):  # {why[kind]}")
            lines += self._attn_body(top, kind, mode, qk_dt, pv_dt, LJ)
        return lines

    def _attn_body(self, top: Scope, kind: str, mode: str, qk_dt: DType, pv_dt: DType,
                   LJ: str) -> list[str]:
        """One key block: S = q @ k^T, the score modifications in base 2, the online softmax
        update and acc += P @ v. `kind`: "whole" (every row sees every key of the tile: no
        masks), "masked" or "every" (the masks and the end applied) or "split" (either, by a
        branch on the tile, which only selects: every stage in one loop; Triton 3.6's
        pipeliner fails on branches that compute more). `mode`: "folded" (a positive scale,
        _softmax), "general" or "either" (by POS_SCALE)."""
        a = self.attn
        body = top.child(deeper=True)
        b = body.emit

        def key_mask(var: str, shape: str) -> str:  # none in a whole tile
            return mask(var, None, shape) if kind == "whole" else end_mask(var, LJ, shape)

        for line in ("kj = j0 + offs_n[None, :]", key_mask("kj", "[1, BLOCK_N]"),
                     "mask_k = mask_kd & mask_kj"):
            b(line)
        body.tile("kj", frozenset("r"))
        self.frame("k")
        kt = self.dots.operand(a.qk, a.qk.rhs, body, TL_DTYPE[qk_dt.name], self.d)
        b(f"s = tl.dot(q, {kt}{self.dots.precision(qk_dt)})")
        for line in ("vj = j0 + offs_n[:, None]", key_mask("vj", "[BLOCK_N, 1]"),
                     "mask_v = mask_vj & mask_ve"):
            b(line)
        body.tile("vj", frozenset("p"))
        self.frame("v")
        vt = self.dots.operand(a.pv, a.pv.rhs, body, TL_DTYPE[pv_dt.name], self.j)
        for line in ("sj = j0 + offs_n[None, :]", key_mask("sj", "[1, BLOCK_N]"),
                     "mask_s = mask_si & mask_sj"):
            b(line)
        body.tile("sj", frozenset("r"))
        body.tile("s", frozenset("pr"))
        self.frame("s")
        body.values[self.gen(a.qk.gi).results[0]] = "s"
        if mode != "either":
            self._softmax(body, kind, mode == "folded")
        else:
            b("if POS_SCALE:  # the scale is positive (the launch checks)")
            self._softmax(self._nested(body), kind, True)
            b("else:")
            self._softmax(self._nested(body), kind, False)
        red_sum = self.row_reduce("tl.sum", "p")
        for line in ("alpha = tl.exp2(m_i - m_use)", f"l_i = l_i * alpha + {red_sum}",
                     "m_i = m_new"):
            b(line)
        b(f"acc = tl.dot(p.to({TL_DTYPE[pv_dt.name]}), {vt}, "
          f"acc * alpha{self.dots.precision(pv_dt)})")
        return body.lines

    @staticmethod
    def _nested(scope: Scope) -> Scope:
        """A scope one level in whose lines land in `scope` as they are emitted."""
        inner = scope.child(deeper=True)
        inner.lines = scope.lines
        return inner

    def _softmax(self, scope: Scope, kind: str, folded: bool) -> None:
        """The scores t of the tile (_scores), then m_new and p = exp2(t - running max): for
        a positive scale c with `folded`, t is s masked and unscaled, and since max(c * t) =
        c * max(t), scale and base-2 factor fold into one multiply-add per score."""
        if kind == "split":
            scope.emit("if (j0 < mid_lo) | (j0 >= mid_hi):  # a mask or the end cuts the tile")
            self._scores(self._nested(scope), False, folded)
            scope.emit("else:  # every row sees the whole tile")
            self._scores(self._nested(scope), True, folded)
        else:
            self._scores(scope, kind == "whole", folded)
        c = f" * ({self.scale[0]} * {LOG2E})" if folded and self.scale is not None else ""
        for line in (f"m_new = tl.maximum(m_i, {self.row_reduce('tl.max', 't')}{c})", _GUARD,
                     f"p = tl.exp2(t{c} - m_use)"):
            scope.emit(line)

    def _scores(self, scope: Scope, whole: bool, folded: bool) -> None:
        """t = the score tile in base 2 (the factor folded into the scale op when there is
        one; with `folded` the scale op is left out, applied by _softmax), masked past the
        end unless `whole`, where the masks are left out too."""
        if folded and whole:
            scope.emit("t = s")
            return
        unmasked = {sel for _, sel in self.attn.masks} if whole else set()
        factor = {} if self.scale_op is None else \
            {self.scale_op: None if folded else str(LOG2E)}
        with self.assuming(unmasked, factor):
            t = self.tensor_value(self.attn.scores, scope, False)
        if self.scale_op is None:  # base 2: one multiply
            t = f"({t}) * {LOG2E}"
        scope.emit(f"t = {t}" if whole else f"t = tl.where(mask_sj, {t}, float(\"-inf\"))")

    def _scores_read_memory(self, t: int) -> bool:
        """Whether computing tensor t (the scores) loads a tensor besides q @ k^T: then the
        stages stay separate loops, whose loads Triton pipelines (not so inside a branch)."""
        if t in self.plan.fills or t == self.gen(self.attn.qk.gi).results[0]:
            return False
        if t not in self.producer:
            return True
        return any(self._scores_read_memory(x) for x in self.gen(self.producer[t]).inputs)

    def source(self) -> KernelSource:
        self.scale_op = self._log2_scale()
        self.scale = self._scale_sign(self.scale_op)
        if self.scale is not None and self.scale[1] == "POS_SCALE":
            self.constexprs = AttnConstexprs.names(pos_scale=True)

        def write(name: str, tensors: list[TensorArg]) -> list[str]:
            return [*self.write_attn(name, tensors), "", "",
                    *self.write_attn(f"{name}_split", tensors, part=True), "", "",
                    *write_combine(self, f"{name}_combine", tensors)]

        ks = tiled_source(self, self.dots, write, self.i, self.j, self.d,
                          self.dots.dot_dtype(self.attn.qk), AttnInfo(self.e, self.scale_scalar))
        ks.split_name, ks.combine_name = f"{ks.name}_split", f"{ks.name}_combine"
        return ks
