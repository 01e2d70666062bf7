"""A kernel's launch state (Launch: its functions and what it remembers per shape), and the
launch of a tiled kernel (contractions, flash attention forward and backward) with the config
for its shape: remembered, tuned on first use on a GPU, or the first candidate for small
work."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fusile.backends.triton import tune
from fusile.backends.triton.kernel_source import KernelSource
from fusile.bounded import Bounded

if TYPE_CHECKING:
    from fusile.backends.triton.kinds.kind import Kind


@dataclass
class Launch:
    ks: KernelSource
    fn: Any
    stride_axes: list[list[int]]  # per tensor argument, the axes whose stride is passed
    alloc_classes: dict[int, list[tuple]]  # output tensor -> class of each axis
    sized: dict[int, tuple]  # index class -> the global class that gives its size
    kind: Kind  # kinds/: how it launches
    # row kernels: sizes -> (config, grid, whether a split column reduction)
    configs: Bounded[tuple, Any] = field(default_factory=Bounded)
    ready: Bounded[tuple, Any] = field(default_factory=Bounded)  # tiled: shape -> launch
    compiled: Bounded[tuple, Any] = field(default_factory=Bounded)  # specialization -> kernel
    splits: Bounded[tuple[int, int], Any] = field(default_factory=Bounded)  # sizes -> split plan
    key: str = ""  # the kernel's source hash: what tuning results are remembered under


def launch_tuned(prog: Any, launch: Launch, shape: tuple, flops: int,
                 candidates: Callable[[], list[tune.DotConfig]],
                 label: Callable[[], tuple[str, str]],
                 grid: Callable[[tune.DotConfig], tuple[int, ...]],
                 consts: Callable[[tune.DotConfig], dict[str, Any]], device: Any,
                 args: tuple) -> None:
    """Launch a tiled kernel with the config for this shape: remembered, else the tuner's
    winner (timed here on first use on a GPU), else the rule-based pick for small work.
    `label` gives the tuner's key and the size it prints (only built when tuning).
    `shape` must decide the launch (grid, constexprs, options): it is cached by it."""
    ready = launch.ready.get(shape)
    if ready is not None:  # a shape seen before: its launch is known
        prog.run_variant(launch, "main", ready[0], ready[1], ready[2], device, args)
        return
    cands = candidates()
    if prog.recorder is not None:  # a shape's first launch (the tuner's trials among them):
        prog.recorder.abandon()  # record a later call
    if device.type == "cpu" or flops < 2**30:
        cfg = cands[0]  # small: not worth timing
    else:
        def go(c: tune.DotConfig) -> None:
            prog.run_variant(launch, "main", grid(c), consts(c), c.options(prog.target.backend),
                             device, args)

        warm = [False]

        def time(c: tune.DotConfig) -> float:
            from triton.testing import do_bench

            # the first timing ramps the clocks up after the compiles (~250 ms)
            ms = do_bench(lambda: go(c), warmup=25 if warm[0] else 250, rep=25,
                          return_mode="median")
            warm[0] = True
            return float(ms)

        key, size = label()
        cfg = tune.TUNER.best(prog.target, key, cands, size, time, go)
    ready = launch.ready.put(shape, (grid(cfg), consts(cfg),
                                     cfg.options(prog.target.backend)))
    prog.run_variant(launch, "main", ready[0], ready[1], ready[2], device, args)


def dot_sizes(launch: Launch, sizes: dict[tuple, int]) -> tuple[int, int, int, int]:
    """A tiled kernel's m, n and k sizes for this call, and its batch, flattened."""
    dot, sized = launch.ks.dot, launch.sized
    assert dot is not None
    batch = math.prod(sizes[sized[c]] for c in dot.batch)
    return sizes[sized[dot.m]], sizes[sized[dot.n]], sizes[sized[dot.k]], batch


def split_count(target: Any, programs: int, length: int, block: int, forced: int = 0) -> int:
    """Programs per row block for a tiled kernel whose loop over `length` (keys, columns)
    can split across programs, merged by a combine (flash-decoding, dot-rows): enough for
    about two programs per SM when the row blocks alone leave SMs idle, each keeping at least
    four tiles of `block`, so the partials stay small next to what is read. `forced` (a
    knob) overrides the choice, up to one split per tile; the interpreter never splits unless
    forced."""
    tiles = max(1, math.ceil(length / block))
    if forced > 0:
        return min(forced, tiles)
    if target.backend == "interpreter" or programs >= target.compute_units:
        return 1
    return max(1, min(math.ceil(2 * target.compute_units / programs), tiles // 4))
