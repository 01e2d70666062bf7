"""A contraction whose rows are reduced (lowering/dot_rows.py) -> one kernel that never
stores the contraction: a linear layer's cross-entropy without the (tokens x vocab) logits.

One program owns BLOCK_M rows of one batch index and loops over the columns n in blocks of
BLOCK_N. Per block: S = a @ b^T by a loop over the contracted axis in BLOCK_K steps (tl.dot,
float32 accumulation, as a contraction kernel's K loop), the elementwise functions T of S,
each plain reduction folded into a [BLOCK_M, 1] accumulator, and each log-sum-exp updated
online: a running max m and a sum l of exp(T - r) where r = guard(m) (softmax's shift, 0 for
an infinite max), rescaled by exp(r_old - r_new) when the max grows. After the loop: the
reductions' results, the guards, and one store per row.

When the row blocks alone leave SMs idle (few tokens, or a large vocabulary per token), the
split variant gives program (pid, sid) the columns [sid * S_CHUNK, + S_CHUNK) of its row
block (S_CHUNK a multiple of BLOCK_N) and stores its accumulators, running maxes and sums as
float32 partials; the combine variant, one program per row block, merges them as the loop
merges tiles and runs the same epilogue. Partials: stat j of split s of program p, row i at
((j * n_prog + p) * S + s) * BLOCK_M + i.

Frames (tile axes): a (m, k), b (k, n), s (m, n).
"""

from __future__ import annotations

from fusile.backends.triton.codegen_tiled import DotOperands, batch_index, tiled_source
from fusile.backends.triton.constexprs import DotRowsConstexprs
from fusile.backends.triton.emitter import TileEmitter, mask
from fusile.backends.triton.kernel_source import KernelSource, TensorArg
from fusile.backends.triton.ops import INF, RULES, TL_DTYPE, acc_type, shift, unshifted
from fusile.backends.triton.scope import Scope
from fusile.dsl.errors import InternalError
from fusile.dsl.types import DType
from fusile.lowering.dot_rows import DotRowsForm
from fusile.lowering.graph import Op
from fusile.lowering.partition import Kernel, Plan

_FRAMES = {"a": ("am", "ak", "BLOCK_M", "BLOCK_K"), "b": ("bk", "bn", "BLOCK_K", "BLOCK_N"),
           "s": ("si", "sj", "BLOCK_M", "BLOCK_N")}
PART_ARGS = ("part_ptr", "S", "S_CHUNK")

class DotRowsWriter(TileEmitter):
    constexprs: tuple[str, ...] = DotRowsConstexprs.names()

    def __init__(self, plan: Plan, kernel: Kernel, target: str, names: dict[int, str],
                 tf32: bool = False):
        assert kernel.rows is not None
        self.form: DotRowsForm = kernel.rows
        self.dots = DotOperands(self, tf32)
        super().__init__(plan, kernel, target, names)

    def _order_classes(self) -> None:
        d, lc = self.form.dot, self.k.loop_class
        self.m, self.n, self.kc = (lc[(d.gi, x)] for x in (d.m, d.n, d.k))
        self.batch = list(dict.fromkeys(lc[(d.gi, b)] for b in d.batch if (d.gi, b) in lc))
        order = [*self.batch, self.m, self.n, self.kc]
        if any(c not in order for c in self.k.domain):
            raise InternalError("a row-reduced contraction has loops outside its dot")
        self.classes = order
        self.p_classes, self.r_classes = [*self.batch, self.m], [self.n, self.kc]
        self.cname = {c: f"n{i}" for i, c in enumerate(order)}
        self.bidx = {c: f"b{i}" for i, c in enumerate(self.batch)}
        self.frame("s")

    def frame(self, f: str) -> None:
        row, col, brow, bcol = _FRAMES[f]
        rc, cc = {"a": (self.m, self.kc), "b": (self.kc, self.n), "s": (self.m, self.n)}[f]
        self.set_frame(rc, cc, row, col, (brow, bcol), f"mask_{f}")

    # ------------------------------------------------------------------ what is reduced
    def _folds(self) -> list[tuple[int, int, int, Op, int]]:
        """(generic, result, yield, combiner, init) of each plain reduction."""
        out = []
        for gi in self.form.folds:
            node = self.gen(gi)
            combiners = self.combiners(node)
            for r, y, init in zip(node.results, node.yields, node.outputs, strict=True):
                out.append((gi, r, y, combiners[y][0], init))
        return out

    def _stats(self) -> list[tuple[str, str]]:
        """Every per-row statistic the loop carries, (variable, how partials merge): "fold"
        an accumulator (merged by its combiner), then each online (max, sum) pair."""
        stats = [(f"acc{y}", "fold") for _g, _r, y, _o, _i in self._folds()]
        for i in range(len(self.form.online)):
            stats += [(f"m{i}", "max"), (f"l{i}", "sum")]
        return stats

    def _init(self, top: Scope) -> None:
        for _g, _r, y, op, _i in self._folds():
            top.emit(f"acc{y} = tl.full([BLOCK_M, 1], {self.identity(op)}, "
                     f"{acc_type(op.dtype)})")
        for i in range(len(self.form.online)):
            top.emit(f"m{i} = tl.full([BLOCK_M, 1], -{INF}, tl.float32)  # running max")
            top.emit(f"l{i} = tl.full([BLOCK_M, 1], 0.0, tl.float32)  # sum of exp(T - guard(m))")

    def _merge(self, scope: Scope, i: int, m_s: str, l_s: str) -> None:
        """Merge a max m_s and a sum l_s into online pair i: its sum rescaled to the new
        shift r_new, which l_s (an expression) may read, as the sum of a tile's exp(T -
        r_new) does."""
        o = self.form.online[i]
        max_op = self.combiners(self.gen(o.row_max))
        (op, _f), = max_op.values()
        m, l_ = f"m{i}", f"l{i}"
        scope.emit(f"m_new = {RULES[op.name]([m, m_s], op, self.target)}")
        scope.emit(f"r_new = {shift('m_new')}")
        scope.emit(f"{l_} = tl.where({m} == -{INF}, 0.0, {l_} * tl.exp({shift(m)} - r_new)) "
                   f"+ {l_s}")
        scope.emit(f"{m} = m_new")

    # ------------------------------------------------------------------ the kernels
    def _rows(self, top: Scope) -> str:
        """This program's rows (offs_m) and their frames; returns M's size parameter."""
        e = top.emit
        M = self.cname[self.m]
        self.program_id(top)
        e(f"tiles_m = ({M} + BLOCK_M - 1) // BLOCK_M")
        e("pid_b = pid // tiles_m  # batch index, flattened")
        e("pid_m = pid % tiles_m")
        batch_index(self, top)
        e("offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)")
        e("si = offs_m[:, None]")
        e(mask("si", M, "[BLOCK_M, 1]"))
        top.tile("si", frozenset("p"))
        return M

    def write_rows(self, name: str, tensors: list[TensorArg], part: bool = False) -> list[str]:
        """The kernel; with `part`, its split variant (columns of a chunk, partials out)."""
        dt = self.dots.runnable(self.dots.dot_dtype(self.form.dot))
        top = Scope.function()
        e = top.emit
        M = self._rows(top)
        N, K = self.cname[self.n], self.cname[self.kc]
        e("offs_n = tl.arange(0, BLOCK_N)")
        e("offs_k = tl.arange(0, BLOCK_K)")
        e("if USE_I64:  # column and contracted offsets times strides past 2**31")
        e("    offs_n = offs_n.to(tl.int64)")
        e("    offs_k = offs_k.to(tl.int64)")
        e(f"am = (offs_m % {M})[:, None]  # rows past the end wrap: loaded, never stored")
        e(mask("am", None, "[BLOCK_M, 1]"))
        top.tile("am", frozenset("p"))
        lo, hi = "0", N
        if part:
            e("sid = tl.program_id(1)  # this program's chunk of columns")
            lo, hi = "sid * S_CHUNK", f"tl.minimum(sid * S_CHUNK + S_CHUNK, {N})"
        self._init(top)
        with top.block(f"for j0 in range({lo}, {hi}, BLOCK_N):") as body:
            self._tile(body, dt, N, K)
        if part:
            self._store_partials(top)
            return self.header(name, tensors, False, PART_ARGS,
                               " (split columns: partials)") + top.lines
        self._epilogue(top)
        note = f" (tl.dot on {dt.name}, rows reduced on chip)"
        return self.header(name, tensors, False, note=note) + top.lines

    def _tile(self, body: Scope, dt: DType, N: str, K: str) -> None:
        """One block of columns: S by the K loop, then the reductions folded in."""
        tl_dt = TL_DTYPE[dt.name]
        b = body.emit
        b(f"bn = ((j0 + offs_n) % {N})[None, :]  # columns past the end wrap: never reduced")
        b(mask("bn", None, "[1, BLOCK_N]"))
        body.tile("bn", frozenset("r"))
        b("s = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)")
        with body.block(f"for k0 in range(0, {K}, BLOCK_K):") as inner:
            inner.emit("ak = k0 + offs_k[None, :]")
            inner.emit(mask("ak", K, "[1, BLOCK_K]", "EVEN_K"))
            inner.emit("mask_a = mask_am & mask_ak")
            inner.tile("ak", frozenset("r"))
            self.frame("a")
            lhs = self.dots.operand(self.form.dot, self.form.dot.lhs, inner, tl_dt, self.kc)
            inner.emit("bk = k0 + offs_k[:, None]")
            inner.emit(mask("bk", K, "[BLOCK_K, 1]", "EVEN_K"))
            inner.emit("mask_b = mask_bk & mask_bn")
            inner.tile("bk", frozenset("p"))
            self.frame("b")
            rhs = self.dots.operand(self.form.dot, self.form.dot.rhs, inner, tl_dt, self.kc)
            inner.emit(f"s = tl.dot({lhs}, {rhs}, s{self.dots.precision(dt)})")
        self.frame("s")
        b("sj = (j0 + offs_n)[None, :]")
        b(mask("sj", N, "[1, BLOCK_N]"))
        b("mask_s = mask_si & mask_sj")
        body.tile("sj", frozenset("r"))
        body.tile("s", frozenset("pr"))
        body.values[self.gen(self.form.dot.gi).results[0]] = "s"
        for gi in self.form.folds:
            node = self.gen(gi)
            self.emit_generic(gi, body, False, {y: f"acc{y}" for y in node.yields},
                              fold_mask="mask_sj", per_tile=True)
        for i, o in enumerate(self.form.online):
            t = self.tensor_value(o.scores, body, False)
            (op, _f), = self.combiners(self.gen(o.row_max)).values()
            b(f"t{i} = tl.where(mask_sj, {t}, -{INF})")
            b(f"m_tile = {self.reduce_call(op, f't{i}')}")
            body.tile(f"t{i}", frozenset("pr"))
            self._merge(body, i, "m_tile", self.row_reduce("tl.sum", f"tl.exp(t{i} - r_new)"))

    def _store_partials(self, top: Scope) -> None:
        e = top.emit
        e("n_prog = tl.num_programs(0)")
        e("rows = (pid * S + sid) * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]")
        for j, (var, _how) in enumerate(self._stats()):
            e(f"tl.store(part_ptr + {j} * n_prog * S * BLOCK_M + rows, {var})")

    def write_combine(self, name: str, tensors: list[TensorArg]) -> list[str]:
        """One program per row block: merge its S partials, then the epilogue."""
        top = Scope.function()
        e = top.emit
        self._rows(top)
        self.frame("s")
        self._init(top)
        e("n_prog = tl.num_programs(0)")
        stats = self._stats()
        folds = {f"acc{y}": op for _g, _r, y, op, _i in self._folds()}
        with top.block("for s in range(0, S):") as loop:
            loop.emit("rows = (pid * S + s) * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]")
            for j in range(len(stats)):
                loop.emit(f"p{j} = tl.load(part_ptr + {j} * n_prog * S * BLOCK_M + rows)")
            for j, (var, how) in enumerate(stats):
                if how == "fold":
                    op = folds[var]
                    loop.emit(f"{var} = {RULES[op.name]([var, f'p{j}'], op, self.target)}")
            for i in range(len(self.form.online)):
                j = stats.index((f"m{i}", "max"))
                m_s, l_s = f"p{j}", f"p{j + 1}"
                self._merge(loop, i, m_s, f"tl.where({m_s} == -{INF}, 0.0, {l_s} * "
                                          f"tl.exp({shift(m_s)} - r_new))")
        self._epilogue(top)
        return self.header(name, tensors, False, PART_ARGS,
                           " (split columns: combine the partials, then the epilogue)") + top.lines

    def _epilogue(self, top: Scope) -> None:
        """The reductions' results, the guards of the maxes, and the stores (per row)."""
        for _gi, r, y, op, init in self._folds():
            top.tile(f"acc{y}", frozenset("p"))
            self.finish_reduce(r, op, f"acc{y}", top, init)
        for i, o in enumerate(self.form.online):
            for v in (f"m{i}", f"l{i}"):
                top.tile(v, frozenset("p"))
            top.values[self.gen(o.row_max).results[0]] = f"m{i}"
            if not o.guarded:  # shifted by the max itself: NaN where it is infinite
                top.emit(f"l{i} = {unshifted(f'm{i}', f'l{i}')}")
            top.values[self.gen(o.row_sum).results[0]] = f"l{i}"
        for gi in self.form.guards:
            self.emit_generic(gi, top, False)
        for w in self.k.writes:
            if self.n in self.access_of(w) or self.kc in self.access_of(w):
                raise InternalError("a row-reduced contraction stores a per-column tensor")
            self.store(w, top)

    def source(self) -> KernelSource:
        def write(name: str, tensors: list[TensorArg]) -> list[str]:
            return [*self.write_rows(name, tensors), "", "",
                    *self.write_rows(f"{name}_split", tensors, part=True), "", "",
                    *self.write_combine(f"{name}_combine", tensors)]

        ks = tiled_source(self, self.dots, write, self.m, self.n, self.kc,
                          self.dots.dot_dtype(self.form.dot))
        ks.split_name, ks.combine_name = f"{ks.name}_split", f"{ks.name}_combine"
        ks.n_parts = len(self._stats())
        return ks
