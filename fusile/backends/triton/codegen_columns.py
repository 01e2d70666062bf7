"""Rows with column partials (kernel class 5): a row kernel that also sums over its rows, as
a norm backward computes dx per row and dw, db over all rows, reading dy and x once.

The row kernel is persistent: G programs, program `prog` taking row blocks prog, prog + G, ...
Each column sum is folded into a float32 tile (float64 for a float64 sum) over the kernel's
rows and stored once per program as a row of partials, `part[j, prog, :]` (j: which sum).
Where a row does not fit one block (the looped variant) each chunk's sum is added to that
program's partial row in place (the program owns it, so no atomics; a barrier orders one row
block's stores before the next block's loads). The combine kernel then sums the G partials
of each column and runs the elementwise work on the sums (casts, scales) before storing them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusile.backends.triton.codegen_loops import looped_body
from fusile.backends.triton.ops import acc_type
from fusile.backends.triton.scope import Scope
from fusile.lowering.graph import Op

if TYPE_CHECKING:
    from fusile.backends.triton.codegen import RowWriter
    from fusile.backends.triton.kernel_source import TensorArg

EXTRA = ("part_ptr", "G")  # the partials and the number of programs, after the scalars


def column_sums(w: RowWriter) -> list[tuple[int, int, int, Op, int]]:
    """(generic, result, yield, combiner, init) of each column sum, in program order: the
    order of their partial rows."""
    out = []
    for gi in w.k.columns:
        if not w.plan.reduces(gi):
            continue  # elementwise on the sums: the combine runs it
        node = w.gen(gi)
        combiners = w.combiners(node)
        for r, y, init in zip(node.results, node.yields, node.outputs, strict=True):
            out.append((gi, r, y, combiners[y][0], init))
    return out


def _sum_rows(w: RowWriter, tile: str) -> str:
    """A [BLOCK_P, BLOCK_R] float32 tile summed over its rows, kept 2-D."""
    if w.target == "interpreter":
        return f"tl.reduce({tile}, 0, tl.standard._sum_combine, keep_dims=True)"
    return f"tl.sum({tile}, axis=0, keep_dims=True)"


def _fold(w: RowWriter, scope: Scope, sums: list[tuple[int, int, int, Op, int]],
          whole_rows: bool) -> None:
    """Add this tile's values of each column sum to its accumulator (acc<yield>). With
    `whole_rows` the row reductions they read are computed here, else in earlier loops."""
    for gi in dict.fromkeys(g for g, *_ in sums):
        w.emit_generic(gi, scope, whole_rows,
                       {y: f"acc{y}" for g, _r, y, _o, _i in sums if g == gi}, fold_mask="mask")


def _fold_into_partials(w: RowWriter, loop: Scope,
                        sums: list[tuple[int, int, int, Op, int]]) -> None:
    """A looped row block's chunk of columns: its sums added to the program's partials (the
    first block of the program sets them)."""
    for _g, _r, y, op, _i in sums:
        loop.emit(f"acc{y} = tl.full([BLOCK_P, BLOCK_R], 0.0, {acc_type(op.dtype)})")
    _fold(w, loop, sums, False)
    for j, (_g, _r, y, _o, _i) in enumerate(sums):
        at = f"part_ptr + ({j} * G + prog) * R + offs_r"
        loop.emit(f"prev{y} = tl.load({at}, mask=mask_r, other=0.0)")
        loop.emit(f"prev{y} = tl.where(blk > prog, prev{y}, 0.0)  # the first: unset")
        loop.emit(f"tl.store({at}, prev{y} + {_sum_rows(w, f'acc{y}')}, mask=mask_r)")


def write_rows_columns(w: RowWriter, name: str, tensors: list[TensorArg], looped: bool
                       ) -> list[str]:
    sums = column_sums(w)
    head = Scope.function()
    w.sizes(head)
    head.emit("prog = tl.program_id(0)")
    if not looped:
        for _g, _r, y, op, _i in sums:
            head.emit(f"acc{y} = tl.full([BLOCK_P, BLOCK_R], 0.0, {acc_type(op.dtype)})")
    with head.block("for blk in range(prog, (P + BLOCK_P - 1) // BLOCK_P, G):  # its row blocks"
                    ) as body:
        w.row_prologue(body, False, block="blk")
        if looped:
            looped_body(w, body, lambda loop: _fold_into_partials(w, loop, sums))
            body.emit("tl.debug_barrier()  # this block's partials stored before the next loads")
        else:
            w.r_index(body, "")
            for t in w.writes:
                w.store(t, body)
            _fold(w, body, sums, True)
    if not looped:
        head.emit("offs_c = tl.arange(0, BLOCK_R)[None, :]")
        for j, (_g, _r, y, _o, _i) in enumerate(sums):
            head.emit(f"tl.store(part_ptr + ({j} * G + prog) * R + offs_c, "
                      f"{_sum_rows(w, f'acc{y}')}, mask=offs_c < R)")
    note = " (rows, and column sums as partials per program)"
    return w.header(name, tensors, looped, EXTRA, note) + head.lines


def write_columns_combine(w: RowWriter, name: str, tensors: list[TensorArg]) -> list[str]:
    """One program per BLOCK_R columns: the G partials summed BLOCK_P at a time, then the
    elementwise work on the sums, and the stores."""
    top = Scope.function()
    w.sizes(top)
    w.program_id(top)
    top.emit("offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)[None, :]")
    top.emit("mask_r = offs_r < R")
    w.unflatten(top, "offs_r", w.r_classes)
    for j, (_gi, r, y, op, init) in enumerate(column_sums(w)):
        top.emit(f"acc{y} = tl.full([BLOCK_P, BLOCK_R], 0.0, {acc_type(op.dtype)})")
        top.emit("for s0 in range(0, G, BLOCK_P):")
        top.emit("    offs_s = s0 + tl.arange(0, BLOCK_P)[:, None]")
        top.emit(f"    acc{y} += tl.load(part_ptr + ({j} * G + offs_s) * R + offs_r, "
                 "mask=(offs_s < G) & mask_r, other=0.0)")
        var = f"red{r}"
        top.emit(f"{var} = {_sum_rows(w, f'acc{y}')}")
        top.tile(var, frozenset("r"))
        w.finish_reduce(r, op, var, top, init)
    for t in w.k.writes:
        if t not in w.writes:
            w.store(t, top)
    return w.header(name, tensors, True, EXTRA, " (combine the column partials)") + top.lines
