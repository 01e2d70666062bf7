"""Kernel kinds as a table. Each module here registers one Kind (kind.py): rows (pointwise,
row reductions, rows with column partials), dot (contractions), dot_rows (contractions
whose rows are reduced on chip), flash (attention forward and
flash-decoding), flash_grad (attention backward) and segments (independent pointwise kernels
in one launch). A new kernel class is one new module and one entry in KINDS."""

from __future__ import annotations

from typing import Any

from fusile.backends.triton.kinds import dot, dot_rows, flash, flash_grad, rows, segments
from fusile.backends.triton.kinds.kind import Kind

# asked in order: the first that takes a kernel is its kind (rows takes every other kernel,
# a contraction that tl.dot cannot run among them)
KINDS: list[Kind] = [segments.KIND, flash_grad.KIND, flash.KIND, dot_rows.KIND, dot.KIND,
                     rows.KIND]


def kind_of(kernel: Any) -> Kind:
    """The kind of a plan kernel or of its KernelSource (both carry .grad, .attn and .dot)."""
    return next(k for k in KINDS if k.takes(kernel))


def held_classes(kernels: list[Any]) -> list[tuple]:
    """The global (size) classes the kernels hold whole on chip (flash kernels' head dims)."""
    return sorted({ks.class_global[c] for ks in kernels for c in kind_of(ks).held(ks)})


def too_wide(held: list[tuple], sizes: dict[tuple, int], limit: int) -> bool:
    """Whether a size (by global class; unknown ones count as fitting) of a held class passes
    `limit` (Target.max_head_dim; 0: none): then the plain plan runs instead."""
    return bool(limit) and any(sizes.get(c, 0) > limit for c in held)


def runs_flash(compiled: Any, target: Any, sizes: dict[tuple, int]) -> bool:
    """Whether `target` runs `compiled`'s plan with its flash kernels for these sizes (by
    global class; unknown ones fit), rather than the plain plan: compile_for and explain
    decide with it; the runtime keeps held_classes per program and asks too_wide per call."""
    if not target.max_head_dim or not any(k.flash for k in compiled.plan.kernels):
        return True
    from fusile import config

    kernels = compiled.triton("gpu", config.get("tf32"))[1]
    return not too_wide(held_classes(kernels), sizes, target.max_head_dim)
