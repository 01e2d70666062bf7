"""Kernel kinds as a table. Each module here registers one Kind (kind.py): rows (pointwise,
row reductions, rows with column partials), dot (contractions), flash (attention forward and
flash-decoding) and flash_grad (attention backward). A new kernel class is one new module and
one entry below."""

from __future__ import annotations

from typing import Any

from fusile.backends.triton.kinds import dot, flash, flash_grad, rows
from fusile.backends.triton.kinds.kind import Kind

KINDS: dict[str, Kind] = {taken: kind.KIND for kind in (rows, dot, flash, flash_grad)
                          for taken in kind.KIND.takes}


def kind_of(kernel: Any) -> Kind:
    """The kind of a plan kernel or of its KernelSource (both carry the partitioner's kind)."""
    return KINDS[kernel.kind]
