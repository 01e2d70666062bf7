"""What the code generator hands the runtime and the AOT compiler: each kernel's Triton source
with the arguments it takes (tensors, strides, sizes, scalars) and what its launch needs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fusile.dsl.types import DType, f32


@dataclass
class TensorArg:
    tid: int
    name: str
    classes: list[int | None]  # index class per axis of its first access (None: index 0)
    stride_axes: list[int]  # axes whose stride is an argument (every axis not of size 1)
    dtype: DType
    is_output: bool


@dataclass
class KernelSource:
    name: str
    kind: str
    index: int
    source: str
    tensors: list[TensorArg]
    classes: list[int]  # index classes, one size argument each, in order
    p_classes: list[int]
    r_classes: list[int]
    class_global: dict[int, tuple]  # index class -> global class (what gives its size)
    scalars: list[int]  # function-level values passed as arguments
    looped_name: str | None = None
    split_name: str | None = None  # column reductions: partial reductions over row ranges,
    combine_name: str | None = None  # then combining them and the epilogue
    n_parts: int = 0  # reduction results the split kernel stores partials of
    part_dtype: DType = f32  # their dtype: float64 where a float64 sum is among them
    dot: Any = None  # a contraction kernel's DotInfo (codegen_dot)
    attn: Any = None  # an attention kernel's (value-dim class, runtime scale or None); dot: i, j, d
    grad: Any = None  # an attention backward kernel's (head classes, each dot's head class)


def short_loc(loc: str) -> str:
    """An MLIR location as the user's file:line (the comment on each generated line)."""
    m = re.search(r'loc\("([^"]*)":(\d+):\d+\)', loc)
    if not m:
        return ""
    return f"{m.group(1).rsplit('/', 1)[-1]}:{m.group(2)}"
