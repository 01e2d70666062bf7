"""What a kind of kernel provides (one object per file in this package): the partitioner's
kernel kinds it takes, its writer (plan kernel -> KernelSource), its launch on tensors and its
ahead-of-time compile. generate, the runtime and AOT look a kernel's kind up (kinds/__init__)
instead of switching on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fusile.backends.triton.aot_build import AotContext, KernelArtifact
    from fusile.backends.triton.kernel_source import KernelSource
    from fusile.backends.triton.tiled import Launch
    from fusile.lowering.partition import Kernel, Plan


@dataclass(frozen=True)
class Kind:
    name: str
    # whether it takes a plan kernel (or its KernelSource): kinds/__init__ asks them in order
    takes: Callable[[Any], bool]
    # (plan, kernel, family "gpu" | "interpreter", tensor names, tf32) -> its source
    write: Callable[[Plan, Kernel, str, dict[int, str], bool], KernelSource]
    # (program, launch, tensors, arguments, sizes by class, device): runs it. The program is
    # runtime.TritonProgram: .target, .recorder and .run_variant(launch, variant, grid,
    # constexprs, options, device, arguments)
    launch: Callable[[Any, Launch, list[Any], tuple, dict[tuple, int], Any], None]
    # (context, kernel) -> its compiled variants for the context's target
    compile: Callable[[AotContext, KernelSource], list[KernelArtifact]]
    # the kernel's index classes a program holds whole on chip (a flash kernel's head dims:
    # Target.max_head_dim bounds them)
    held: Callable[[KernelSource], list[int]] = lambda ks: []
