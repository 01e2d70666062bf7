"""What the code generator hands the runtime and the AOT compiler: each kernel's Triton source
with the arguments it takes (tensors, strides, sizes, scalars) and what its launch needs."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fusile.dsl.types import DType, f32


@dataclass
class TensorArg:
    tid: int
    name: str
    classes: list[int | None]  # index class per axis of its first access (None: index 0)
    stride_axes: list[int]  # axes whose stride is an argument (every axis not of size 1)
    dtype: DType
    is_output: bool


@dataclass(frozen=True)
class DotInfo:
    """What the launcher needs of a tiled kernel: index classes of the batch, m, n and k
    loops."""

    batch: list[int]
    m: int
    n: int
    k: int
    dtype: str  # operand type of tl.dot: bf16, f16 or f32
    prologue: bool = False  # operands are computed (not just loaded): more registers per tile


@dataclass(frozen=True)
class AttnInfo:
    """A flash forward kernel's value head dim (index class) and its runtime score scale (the
    value id the launch reads the sign of), if the scale is not a constant."""

    value_dim: int
    scale: int | None


@dataclass(frozen=True)
class GradInfo:
    """A flash backward kernel's head dims (index classes) and each dot's head dim."""

    heads: tuple[int, ...]
    per_dot: tuple[int, ...]


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
    dot: DotInfo | None = None  # a tiled kernel's loops (flash: i, j and d)
    attn: AttnInfo | None = None  # a flash forward kernel's
    grad: GradInfo | None = None  # a flash backward kernel's
    segments: list[KernelSource] | None = None  # independent kernels in one launch


def short_loc(loc: str) -> str:
    """An MLIR location as the user's file:line (the comment on each generated line)."""
    m = re.search(r'loc\("([^"]*)":(\d+):\d+\)', loc)
    if not m:
        return ""
    return f"{m.group(1).rsplit('/', 1)[-1]}:{m.group(2)}"
