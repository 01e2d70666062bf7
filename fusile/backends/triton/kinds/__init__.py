"""Kernel kinds as a table. Each module here registers one Kind (kind.py): rows (pointwise,
row reductions, rows with column partials), dot (contractions), flash (attention forward and
flash-decoding) and flash_grad (attention backward). A new kernel class is one new module and
one entry in KINDS."""

from __future__ import annotations

from typing import Any

from fusile.backends.triton.kinds import dot, flash, flash_grad, rows
from fusile.backends.triton.kinds.kind import Kind

# asked in order: the first that takes a kernel is its kind (rows takes every other kernel,
# a contraction that tl.dot cannot run among them)
KINDS: list[Kind] = [flash_grad.KIND, flash.KIND, dot.KIND, rows.KIND]


def kind_of(kernel: Any) -> Kind:
    """The kind of a plan kernel or of its KernelSource (both carry .grad, .attn and .dot)."""
    return next(k for k in KINDS if k.takes(kernel))
