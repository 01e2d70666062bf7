"""The multi-pass kernel variants of a reduction kernel, written over a RowWriter:
looped (rows longer than one block: one loop over the row per reduction level, then a loop
for the outputs), and split/combine (long column reductions: partial reductions over row
ranges in parallel, then one kernel combines them and runs the epilogue)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fusile.backends.triton.ops import INF, RULES, acc_type, shift, unshifted
from fusile.backends.triton.scope import Scope
from fusile.lowering import online
from fusile.lowering.graph import Op
from fusile.lowering.online import Online
from fusile.lowering.partition import POINTWISE

if TYPE_CHECKING:
    from fusile.backends.triton.codegen import RowWriter
    from fusile.backends.triton.kernel_source import TensorArg


def levels(w: RowWriter) -> dict[int, int]:
    """Reduction generic -> phase (1 + the deepest reduction it depends on)."""
    memo: dict[int, int] = {}

    def deps(gi: int, seen: set[int]) -> int:
        node = w.gen(gi)
        best = 0
        for t in node.inputs:
            p = w.producer.get(t)
            if p is None or p in seen:
                continue
            seen.add(p)
            best = max(best, level(p) if w.plan.reduces(p) else deps(p, seen))
        return best

    def level(gi: int) -> int:
        if gi not in memo:
            memo[gi] = 1 + deps(gi, set())
        return memo[gi]

    return {gi: level(gi) for gi in w.k.generics
            if w.plan.reduces(gi) and gi not in w.k.columns}


def online_sums(w: RowWriter) -> dict[int, Online]:
    """The kernel's log-sum-exp sums (lowering/online.py) by generic, whose max is a row
    reduction of this kernel: each runs in its max's pass over the row, not one after it."""
    out = {}
    for gi in w.k.generics:
        if gi in w.k.columns or not w.plan.reduces(gi):
            continue
        o = online.find(w.g, gi, w.producer)
        if o is not None and o.row_max in w.k.generics and o.row_max not in w.k.columns \
                and w.spans_p(gi) and w.spans_p(o.row_max):
            out[gi] = o
    return out


def _online_chunk(w: RowWriter, loop: Scope, o: Online) -> None:
    """Fold one chunk of the row into online sum o: the running max om, and the lanes' sums
    ol of exp(T - r) for the shift r = guard(om), rescaled when r moves."""
    s = o.row_sum
    t = w.tensor_value(o.scores, loop, False, w.k.access(s, w.gen(s).maps[0]))
    (op, _f), = w.combiners(w.gen(o.row_max)).values()
    bp, br = w.blocks
    e = loop.emit
    e(f"ot{s} = tl.broadcast_to(tl.where(mask_r, {t}, -{INF}).to({acc_type(op.dtype)}), "
      f"[{bp}, {br}])")
    e(f"m_new = {RULES[op.name]([f'om{s}', w.reduce_call(op, f'ot{s}')], op, w.target)}")
    e(f"r_new = {shift('m_new')}")
    e(f"ol{s} = tl.where(om{s} == -{INF}, 0.0, ol{s} * tl.exp({shift(f'om{s}')} - r_new)) "
      f"+ tl.exp(ot{s} - r_new)")
    e(f"om{s} = m_new")


def write_looped(w: RowWriter, name: str, tensors: list[TensorArg]) -> list[str]:
    top = Scope.function()
    w.row_prologue(top, False)
    looped_body(w, top)
    return w.header(name, tensors, True) + top.lines


def looped_body(w: RowWriter, top: Scope,
                fold: Callable[[Scope], None] | None = None) -> None:
    """A looped row kernel's body after its prologue, in `top`: a loop over the row per
    reduction level, then one that stores what spans the row, where `fold` (if given) also
    adds the chunk to column sums."""
    by_level = levels(w)
    sums = online_sums(w)
    for o in sums.values():  # it only waits for its max, which it runs beside
        by_level[o.row_sum] = by_level[o.row_max]
    in_pass = {x for o in sums.values() for x in (o.row_max, o.row_sum)}
    bp, br = w.blocks
    for phase in range(1, max(by_level.values(), default=0) + 1):
        gens = [gi for gi, lv in by_level.items() if lv == phase]
        accs = {}
        for gi in gens:
            if gi in sums:
                (op, _f), = w.combiners(w.gen(sums[gi].row_max)).values()
                top.emit(f"om{gi} = tl.full([{bp}, 1], -{INF}, {acc_type(op.dtype)})")
                top.emit(f"ol{gi} = tl.full([{bp}, {br}], 0.0, {acc_type(op.dtype)})")
            if gi in in_pass:
                continue
            node = w.gen(gi)
            for y, (op, _f) in w.combiners(node).items():
                acc = f"acc{y}"
                accs[(gi, y)] = acc
                top.emit(f"{acc} = tl.full([BLOCK_P, BLOCK_R], {w.identity(op)}, "
                         f"{acc_type(op.dtype)})")
        with top.block("for r0 in range(0, R, BLOCK_R):") as loop:
            w.r_index(loop, "r0 + ")
            for gi in gens:
                if gi in sums:
                    _online_chunk(w, loop, sums[gi])
                elif gi not in in_pass:
                    w.emit_generic(gi, loop, False,
                                   {y: f"acc{y}" for (g, y) in accs if g == gi})
        for gi in gens:
            if gi in sums:
                _finish_online(w, top, sums[gi])
            if gi in in_pass:
                continue
            node = w.gen(gi)
            for r, y, init in zip(node.results, node.yields, node.outputs, strict=True):
                op, _ = w.combiners(node)[y]
                var = f"red{r}"
                top.emit(f"{var} = {w.reduce_call(op, f'acc{y}')}")
                if w.spans_p(gi):
                    top.tile(var, frozenset("p"))
                else:  # every row of the accumulator holds the same value: keep one
                    top.emit(f"{var} = tl.max({var}, axis=0, keep_dims=True)"
                             if w.target != "interpreter" else
                             f"{var} = tl.reduce({var}, 0, tl.standard._elementwise_max, "
                             "keep_dims=True)")
                    top.tile(var, frozenset())
                w.finish_reduce(r, op, var, top, init)
    spanning = [t for t in w.writes
                if "r" in w.axes_of_classes(w.tensor_arg(t, True).classes)]
    for t in w.writes:
        if t not in spanning:  # row results are stored once, outside the loops
            w.store(t, top)
    if spanning or fold is not None:
        with top.block("for r0 in range(0, R, BLOCK_R):") as loop:
            w.r_index(loop, "r0 + ")
            for t in spanning:
                w.store(t, loop)
            if fold is not None:
                fold(loop)


def _finish_online(w: RowWriter, top: Scope, o: Online) -> None:
    """The max and the sum of online sum o, after its pass."""
    s = o.row_sum
    top.emit(f"ls{s} = {w.row_reduce('tl.sum', f'ol{s}')}")
    total = f"ls{s}" if o.guarded else unshifted(f"om{s}", f"ls{s}")  # NaN where m is inf
    for gi, var in ((o.row_max, f"om{s}"), (s, total)):
        node = w.gen(gi)
        (r,), (init,) = node.results, node.outputs
        (op, _f), = w.combiners(node).values()
        top.emit(f"red{r} = {var}")
        top.tile(f"red{r}", frozenset("p"))
        w.finish_reduce(r, op, f"red{r}", top, init)


def parts(w: RowWriter) -> list[tuple[int, int, int, Op, int]]:
    """(generic, result, yield, combiner, init) of each reduction, for split kernels."""
    out = []
    for gi, _lv in sorted(levels(w).items()):
        node = w.gen(gi)
        combiners = w.combiners(node)
        for r, y, init in zip(node.results, node.yields, node.outputs, strict=True):
            out.append((gi, r, y, combiners[y][0], init))
    return out


def splittable(w: RowWriter) -> bool:
    """One level of float reductions whose results are all the kernel writes per row: the
    rows can be cut into ranges reduced in parallel and combined after."""
    if w.k.kind == POINTWISE or not w.k.reduced:
        return False
    if set(levels(w).values()) != {1}:
        return False
    if any("r" in w.axes_of_classes(w.tensor_arg(t, True).classes)
           for t in w.writes):
        return False
    return all(op.dtype.is_float for _g, _r, _y, op, _i in parts(w))


def write_split(w: RowWriter, name: str, tensors: list[TensorArg]) -> list[str]:
    top = Scope.function()
    w.row_prologue(top, False)
    top.emit("sid = tl.program_id(1)  # this program's range of rows")
    top.emit("r_lo = sid * S_CHUNK")
    top.emit("r_hi = tl.minimum(r_lo + S_CHUNK, R)")
    items = parts(w)
    for _gi, _r, y, op, _init in items:
        top.emit(f"acc{y} = tl.full([BLOCK_P, BLOCK_R], {w.identity(op)}, "
                 f"{acc_type(op.dtype)})")
    with top.block("for r0 in range(r_lo, r_hi, BLOCK_R):") as loop:
        w.r_index(loop, "r0 + ")
        for gi in dict.fromkeys(g for g, *_ in items):
            w.emit_generic(gi, loop, False, {y: f"acc{y}" for g, _r, y, _o, _i in items
                                                 if g == gi})
    for j, (_gi, r, y, op, _init) in enumerate(items):
        top.emit(f"red{r} = {w.reduce_call(op, f'acc{y}')}")
        top.emit(f"tl.store(part_ptr + ({j} * S + sid) * P + offs_p, red{r}, mask=mask_p)")
    return w.header(name, tensors, True, ("part_ptr", "S", "S_CHUNK"),
                       " (split: partial reductions over a range of rows)") + top.lines


def write_combine(w: RowWriter, name: str, tensors: list[TensorArg]) -> list[str]:
    top = Scope.function()
    w.row_prologue(top, False)
    top.emit("offs_s = tl.arange(0, BLOCK_R)[None, :]  # one column per row range")
    top.emit("mask_s = offs_s < S")
    for j, (gi, r, _y, op, init) in enumerate(parts(w)):
        ident = w.identity(op)
        var = f"red{r}"
        if w.spans_p(gi):
            top.emit(f"part{r} = tl.load(part_ptr + ({j} * S + offs_s) * P + offs_p, "
                     f"mask=mask_p & mask_s, other={ident})")
            top.tile(var, frozenset("p"))
        else:  # the same for every column: the first column's partials hold it
            top.emit(f"part{r} = tl.load(part_ptr + ({j} * S + offs_s) * P, mask=mask_s, "
                     f"other={ident})")
            top.tile(var, frozenset())
        top.emit(f"{var} = {w.reduce_call(op, f'part{r}')}")
        w.finish_reduce(r, op, var, top, init)
    for t in w.writes:
        w.store(t, top)
    return w.header(name, tensors, True, ("part_ptr", "S", "S_CHUNK"),
                       " (combine the partials, then the epilogue)") + top.lines
