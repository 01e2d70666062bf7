"""Launching the tiled kernels (contractions, flash attention forward and backward): the
config for a shape (remembered, tuned on first use on a GPU, or the first candidate for small
work), the grid, and for a flash kernel with few row blocks the split-key variant and its
combine (codegen_decode.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fusile import config
from fusile.backends.targets import Target
from fusile.backends.triton import tune
from fusile.backends.triton.host import needs_i64
from fusile.backends.triton.kernel_source import KernelSource
from fusile.backends.triton.launch import dot_grid
from fusile.backends.triton.replay import Recorder
from fusile.bounded import Bounded


@dataclass
class Launch:
    ks: KernelSource
    fn: Any
    r_contiguous: bool
    elem_bytes: int
    stride_axes: list[list[int]]  # per tensor argument, the axes whose stride is passed
    alloc_classes: dict[int, list[tuple]]  # output tensor -> class of each axis
    sized: dict[int, tuple]  # index class -> the global class that gives its size
    configs: Bounded[tuple, Any] = field(default_factory=Bounded)  # row kernels: sizes -> config
    ready: Bounded[tuple, Any] = field(default_factory=Bounded)  # tiled: shape -> launch
    compiled: Bounded[tuple, Any] = field(default_factory=Bounded)  # specialization -> kernel
    splits: Bounded[tuple[int, int], Any] = field(default_factory=Bounded)  # sizes -> split plan
    key: str = ""  # the kernel's source hash: what tuning results are remembered under


class TiledLaunches:
    """The tiled kernels' launches, mixed into TritonProgram (runtime.py), which provides
    the target, the recorder and `_run` (one variant's launch)."""

    target: Target

    @property
    def _rec(self) -> Recorder | None:
        raise NotImplementedError

    def _run(self, launch: Launch, variant: str, grid: tuple[int, ...],
             consts: dict[str, Any], opts: dict[str, Any], device: Any, args: tuple) -> None:
        raise NotImplementedError

    def _launch_dot(self, launch: Launch, tensors: list[Any], args: tuple,
                    sizes: dict[tuple, int], device: Any) -> None:
        """A contraction: tiles of the result, batch flattened into the grid; the config is
        the tuner's winner for this shape bucket (timed here on first use on a GPU)."""
        dot, sized = launch.ks.dot, launch.sized
        m, n, k = (sizes[sized[c]] for c in (dot.m, dot.n, dot.k))
        batch = math.prod(sizes[sized[c]] for c in dot.batch)
        if m == 0 or n == 0 or batch == 0:
            return
        use_i64 = needs_i64(tensors)
        self._launch_tuned(
            launch, (m, n, k, batch, use_i64), 2 * m * n * k * batch,
            lambda: tune.candidates(self.target, dot.dtype, m, n, k, batch, dot.prologue),
            lambda: (f"{launch.key}|{dot.dtype}|{tune.bucket(m, n, k, batch)}",
                     f"{f'{batch} x ' if batch > 1 else ''}{m}x{k} @ {k}x{n}"),
            lambda c: dot_grid(c, m, n, batch), lambda c: c.constexprs(k, use_i64), device,
            args)

    def _launch_attn(self, launch: Launch, tensors: list[Any], args: tuple,
                     sizes: dict[tuple, int], device: Any) -> None:
        """A flash kernel: one program per BLOCK_M query rows of each batch index."""
        dot, sized = launch.ks.dot, launch.sized
        li, lj, d = (sizes[sized[c]] for c in (dot.m, dot.n, dot.k))
        e = sizes[sized[launch.ks.attn[0]]]
        batch = math.prod(sizes[sized[c]] for c in dot.batch)
        if li == 0 or batch == 0 or e == 0:
            return
        use_i64 = needs_i64(tensors)
        extra = {}
        if launch.ks.attn[1] is not None:  # the sign of a runtime score scale
            scalars = launch.ks.scalars
            extra["POS_SCALE"] = args[len(args) - len(scalars) +
                                      scalars.index(launch.ks.attn[1])] > 0
        shape = (li, lj, d, e, batch, use_i64, *extra.values())
        key = ("split keys", config.get("attn_splits"), shape)
        plan = launch.ready.get(key)
        if plan is None:  # decided once per shape (and knob value), as a tuned config is
            plan = launch.ready.put(key, self._split_plan(launch, li, lj, d, e, batch,
                                                          key[1], use_i64, extra))
        if plan:  # few row blocks: split their keys
            self._launch_split_keys(launch, plan, device, args)
            return
        self._launch_tuned(
            launch, shape, 4 * li * lj * max(d, e) * batch,
            lambda: tune.attention_candidates(self.target, max(d, e), li),
            lambda: (f"{launch.key}|{dot.dtype}|{tune.bucket(li, lj, max(d, e), batch)}",
                     f"attention {batch} x {li}x{lj}, d={d}"),
            lambda c: (batch * math.ceil(li / c.block_m),),
            lambda c: tune.attention_constexprs(c, d, e, lj, use_i64) | extra, device, args)

    def _split_plan(self, launch: Launch, li: int, lj: int, d: int, e: int, batch: int,
                    forced: int, use_i64: bool, extra: dict[str, Any]) -> tuple:
        """Flash-decoding's launch for these sizes, or () to run the one-kernel flash path:
        (config, splits, chunk of keys, row blocks, constexprs), with the first candidate
        config (tune.attention_splits says how many splits)."""
        first = tune.attention_candidates(self.target, max(d, e), li)[0]
        programs = batch * math.ceil(li / first.block_m)
        splits = tune.attention_splits(self.target, programs, lj, first.block_n, forced)
        if splits <= 1 or "split" not in launch.fn:
            return ()
        chunk = math.ceil(lj / splits / first.block_n) * first.block_n
        splits = math.ceil(lj / chunk)  # no empty chunk at the end
        consts = tune.attention_constexprs(first, d, e, lj, use_i64) | extra
        return first, splits, chunk, programs, consts

    def _launch_split_keys(self, launch: Launch, plan: tuple, device: Any, args: tuple
                           ) -> None:
        """Flash-decoding (codegen_decode.py): `splits` programs per row block, each over a
        chunk of keys (a multiple of BLOCK_N), into a float32 buffer of partials; then one
        program per row block combines them and runs the epilogue."""
        import torch

        cfg, splits, chunk, programs, consts = plan
        parts = torch.empty(programs * splits * cfg.block_m * (consts["BLOCK_E"] + 2),
                            dtype=torch.float32, device=device)
        if self._rec is not None:
            self._rec.alloc(parts)
        full = (*args, parts, splits, chunk)
        opts = cfg.options(self.target.backend)
        self._run(launch, "split", (programs, splits), consts, opts, device, full)
        self._run(launch, "combine", (programs,), consts, opts, device, full)

    def _launch_grad(self, launch: Launch, tensors: list[Any], args: tuple,
                     sizes: dict[tuple, int], device: Any) -> None:
        """A flash backward kernel: a program per BLOCK_M kept positions, looping the other."""
        dot, sized = launch.ks.dot, launch.sized
        keep, loop = sizes[sized[dot.m]], sizes[sized[dot.n]]
        heads = [sizes[sized[c]] for c in launch.ks.grad[0]]
        batch = math.prod(sizes[sized[c]] for c in dot.batch)
        if keep == 0 or batch == 0 or 0 in heads:
            return
        use_i64 = needs_i64(tensors)
        flops = 2 * keep * loop * batch * sum(sizes[sized[c]] for c in launch.ks.grad[1])
        self._launch_tuned(
            launch, (keep, loop, *heads, batch, use_i64), flops,
            lambda: tune.grad_candidates(self.target, max(heads)),
            lambda: (f"{launch.key}|{dot.dtype}|{tune.bucket(keep, loop, max(heads), batch)}",
                     f"attention backward {batch} x {keep}x{loop}, d={max(heads)}"),
            lambda c: (batch * math.ceil(keep / c.block_m),),
            lambda c: tune.grad_constexprs(c, heads, loop, use_i64), device, args)

    def _launch_tuned(self, launch: Launch, shape: tuple, flops: int,
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
            self._run(launch, "dot", ready[0], ready[1], ready[2], device, args)
            return
        cands = candidates()
        if self._rec is not None:  # a shape's first launch (the tuner's trials among them):
            self._rec.abandon()  # record a later call
        if device.type == "cpu" or flops < 2**30:
            cfg = cands[0]  # small: not worth timing
        else:
            def go(c: tune.DotConfig) -> None:
                self._run(launch, "dot", grid(c), consts(c),
                          c.options(self.target.backend), device, args)

            warm = [False]

            def time(c: tune.DotConfig) -> float:
                from triton.testing import do_bench

                # the first timing ramps the clocks up after the compiles (~250 ms)
                ms = do_bench(lambda: go(c), warmup=25 if warm[0] else 250, rep=25,
                              return_mode="median")
                warm[0] = True
                return float(ms)

            key, size = label()
            cfg = tune.TUNER.best(self.target, key, cands, size, time, go)
        ready = launch.ready.put(shape, (grid(cfg), consts(cfg),
                                         cfg.options(self.target.backend)))
        self._run(launch, "dot", ready[0], ready[1], ready[2], device, args)
