"""Which functions a row kernel's source holds: the single-pass kernel, the looped one (rows
longer than a block), split and combine (long column reductions), or for a rows+columns
kernel its persistent variants and the columns' combine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fusile.backends.triton.codegen_columns import (
    column_sums,
    write_columns_combine,
    write_rows_columns,
)
from fusile.backends.triton.codegen_loops import (
    parts,
    splittable,
    write_combine,
    write_looped,
    write_split,
)
from fusile.dsl.types import DType, f32, f64
from fusile.lowering.graph import Op
from fusile.lowering.partition import POINTWISE

if TYPE_CHECKING:
    from fusile.backends.triton.codegen import RowWriter
    from fusile.backends.triton.kernel_source import TensorArg


@dataclass
class Variants:
    lines: list[str]
    looped: str | None = None
    split: str | None = None
    combine: str | None = None
    n_parts: int = 0  # reductions whose partials the split (or rows+columns) kernel stores
    part_dtype: DType = f32  # theirs: float64 if any of them is a float64 sum


def _part_dtype(items: list[tuple[int, int, int, Op, int]]) -> DType:
    return f64 if any(op.dtype.compute == f64 for *_, op, _i in items) else f32


def variants(w: RowWriter, name: str, tensors: list[TensorArg]) -> Variants:
    if w.k.columns:  # persistent row programs, then a combine
        looped, combine = name + "_looped", name + "_combine"
        sums = column_sums(w)
        return Variants([*write_rows_columns(w, name, tensors, False), "", "",
                         *write_rows_columns(w, looped, tensors, True), "", "",
                         *write_columns_combine(w, combine, tensors)],
                        looped, None, combine, len(sums), _part_dtype(sums))
    out = Variants(w.write_single(name, tensors))
    if w.k.kind != POINTWISE:
        out.looped = name + "_looped"
        out.lines += ["", "", *write_looped(w, out.looped, tensors)]
    if splittable(w):
        out.split, out.combine = name + "_split", name + "_combine"
        out.lines += ["", "", *write_split(w, out.split, tensors), "", "",
                      *write_combine(w, out.combine, tensors)]
        items = parts(w)
        out.n_parts, out.part_dtype = len(items), _part_dtype(items)
    return out
