"""Launch a compiled program's kernels on torch tensors (CUDA/ROCm, or the interpreter on CPU).

Everything that does not depend on the call's sizes is done once per signature (plan, source,
module, argument recipes); a call binds sizes, allocates outputs and launches. On a GPU a
call with an argument layout seen before replays that call's launches (replay.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from typing import Any

from fusile import config
from fusile.backends.targets import Target
from fusile.backends.torch_dtypes import to_torch
from fusile.backends.triton import cache
from fusile.backends.triton.generate import kernel_functions
from fusile.backends.triton.host import CallScalars, dynamic_values, host_env
from fusile.backends.triton.joins import Joins
from fusile.backends.triton.kinds import held_classes, kind_of, too_wide
from fusile.backends.triton.launch import (
    FP_FUSION,
    interpreting,
    launch_compiled,
)
from fusile.backends.triton.replay import Recorder, Replay, layout_key
from fusile.backends.triton.tiled import Launch
from fusile.bounded import Bounded
from fusile.dsl.errors import BackendError
from fusile.lowering.graph import Graph, Op, dim_sources
from fusile.lowering.partition import Plan


class TritonProgram:
    """One compiled signature on one target family, ready to launch. A call whose head dims
    are wider than its flash kernels hold on chip (Target.max_head_dim) runs the signature's
    plain plan instead (`flash=False`: no flash kernels), a program of its own made on the
    first such call."""

    def __init__(self, compiled: Any, target: Target, flash: bool = True):
        graph: Graph = compiled.fused_graph
        self.graph = graph
        self.target = target
        self.plan: Plan = compiled.plan if flash else compiled.plain_plan
        self.names = compiled.names
        family = "interpreter" if target.backend == "interpreter" else "gpu"
        self.source, kernels = compiled.triton(family, config.get("tf32"), flash)
        module = cache.load_module(self.source)
        self.launches: list[Launch] = []
        for ks in kernels:
            fns = kernel_functions(module, ks, family == "interpreter")
            sized = {c: ks.class_global[c] for c in ks.classes}
            strides = [ta.stride_axes for ta in ks.tensors]
            alloc = {ta.tid: [self.plan.tensor_class(ta.tid, a)
                              for a in range(len(graph.tensors[ta.tid].shape))]
                     for ta in ks.tensors if ta.is_output}
            key = hashlib.sha256(ks.source.encode()).hexdigest()[:16]
            self.launches.append(Launch(ks, fns, strides, alloc, sized, kind_of(ks), key=key))
        self._class_source = self._size_sources()
        self._limit = target.max_head_dim
        self._held = held_classes(kernels) if self._limit else []
        self._compiled = compiled
        self._plain: TritonProgram | None = None
        self._joins = Joins(compiled, graph.results, self.plan.tensor_class)  # the results
        self._host_ops = [n for n in graph.nodes if isinstance(n, Op)]
        self._arg_set = set(graph.args)
        # launch compiled kernels directly (skipping the JIT's argument binding) once the JIT
        # has compiled them for an argument specialization; off if the launcher is unfamiliar
        self._fast = config.get("fast_launch")
        # argument layout -> its recorded launches
        self._replays: Bounded[tuple, Replay] = Bounded()
        self._tls = threading.local()  # .rec: the Recorder of this thread's call in progress

    @property
    def recorder(self) -> Recorder | None:
        """The Recorder of this thread's call in progress (None: the call is not recorded)."""
        return getattr(self._tls, "rec", None)

    def _size_sources(self) -> dict[tuple, tuple[int, int] | int]:
        """class -> (runtime arg position, axis) or a static size."""
        src: dict[tuple, tuple[int, int] | int] = {}
        for pos, a in enumerate(self.graph.args):
            info = self.graph.tensors.get(a)
            if info is None:
                continue
            for axis in range(len(info.shape)):
                src.setdefault(self.plan.tensor_class(a, axis), (pos, axis))
        for (t, axis), (a, a_axis) in dim_sources(self.graph).items():
            src.setdefault(self.plan.tensor_class(t, axis), (self.graph.args.index(a), a_axis))
        for t, info in self.graph.tensors.items():
            for axis, s in enumerate(info.shape):
                if s is not None:
                    src.setdefault(self.plan.tensor_class(t, axis), s)
        return src

    def __call__(self, args: list[Any]) -> list[Any]:
        graph = self.graph
        device = next((a.device for a in args if hasattr(a, "device")), None)
        if device is None:
            raise BackendError("a fused call needs at least one tensor argument")
        replayable = self._fast and device.type == "cuda"
        if replayable:  # a layout seen before: launch what it launched (replay.py)
            key = layout_key(args)
            replay = self._replays.get(key)
            if replay is not None:
                outs = replay.run(args)
                if outs is not None:
                    return outs
        sizes = self._sizes(args)
        if self._held and too_wide(self._held, sizes, self._limit):
            return self.plain()(args)
        env = host_env(graph, self._host_ops, args)  # sizes and scalar math, on the host
        rec = self._tls.rec = Recorder(args, dynamic_values(graph, self._host_ops, args)) \
            if replayable else None
        fulls = self._joins.place(env, sizes, device, self._arg_set, rec)  # concats' pieces
        try:
            with interpreting() if device.type == "cpu" else contextlib.nullcontext():
                for launch in self.launches:
                    self._launch(launch, env, sizes, device)
        finally:
            self._tls.rec = None
        outs = self._joins.results(env, fulls, rec)
        if rec is not None:
            scalars = CallScalars(graph, self._host_ops, args, env)
            replay = rec.replay(env, outs, device, launch_compiled, scalars) \
                if scalars.ok else None
            if replay is not None:
                self._replays.put(key, replay)
        return [t.clone() if r in self._arg_set else t
                for t, r in zip(outs, self._joins.ids, strict=True)]

    def _sizes(self, args: list[Any]) -> dict[tuple, int]:
        return {c: s if isinstance(s, int) else args[s[0]].shape[s[1]]
                for c, s in self._class_source.items()}

    def plain(self) -> TritonProgram:
        """The program of the plain plan (made once), for calls with wide head dims."""
        if self._plain is None:
            self._plain = TritonProgram(self._compiled, self.target, flash=False)
        return self._plain

    def plan_for(self, args: list[Any]) -> Plan:
        """The plan a call with these arguments runs (the plain one for wide head dims)."""
        if self._held and too_wide(self._held, self._sizes(args), self._limit):
            return self.plain().plan
        return self.plan

    def replay_for(self, args: list[Any]) -> Replay | None:
        """The recorded launches of a call with these arguments' layout, if any (the plain
        program's, for a call it ran)."""
        got = self._replays.get(layout_key(args)) if self._replays else None
        if got is None and self._plain is not None:
            return self._plain.replay_for(args)
        return got

    def time_kernels(self, args: list[Any]) -> list[float | None]:
        """Median time (ms) of each plan kernel on these inputs (CUDA events, do_bench);
        kernels launched together (kinds/segments.py) are timed as one, the first holding
        the time and the others None."""
        from triton.testing import do_bench

        graph = self.graph
        device = next(a.device for a in args if hasattr(a, "device"))
        if self.plan_for(args) is not self.plan:
            return self.plain().time_kernels(args)
        env = host_env(graph, self._host_ops, args)
        sizes = self._sizes(args)
        times = []
        for launch in self.launches:  # launch in order once, so each reads real inputs
            self._launch(launch, env, sizes, device)
            times.append(do_bench(lambda launch=launch: self._launch(launch, env, sizes, device),
                                  warmup=100, rep=300, return_mode="median"))
            times += [None] * (len(launch.ks.segments or [None]) - 1)
        return times

    def _launch(self, launch: Launch, env: dict[int, Any], sizes: dict[tuple, int],
                device: Any) -> None:
        import torch

        ks = launch.ks
        tensors = []
        for ta in ks.tensors:
            t = env.get(ta.tid)
            if t is None:
                info = self.graph.tensors[ta.tid]
                shape = [s if s is not None else sizes[c]
                         for s, c in zip(info.shape, launch.alloc_classes[ta.tid], strict=True)]
                t = env[ta.tid] = torch.empty(shape, dtype=to_torch(info.dtype), device=device)
                if self.recorder is not None:
                    self.recorder.alloc(t)
            tensors.append(t)
        strides = [t.stride(axis) for t, axes in zip(tensors, launch.stride_axes, strict=True)
                   for axis in axes]
        sized = launch.sized
        class_sizes = [sizes[sized[c]] for c in ks.classes]
        scalars = [env[v] for v in ks.scalars]
        args = (*tensors, *strides, *class_sizes, *scalars)
        if self.recorder is not None:
            first = len(args) - len(scalars)
            self.recorder.scalars = {first + i: v for i, v in enumerate(ks.scalars)}
        launch.kind.launch(self, launch, tensors, args, sizes, device)

    def run_variant(self, launch: Launch, variant: str, grid: tuple[int, ...],
                    consts: dict[str, Any], opts: dict[str, Any], device: Any, args: tuple
                    ) -> None:
        """Launch one kernel variant: straight to the compiled kernel when one exists for this
        specialization (what Triton keys on: pointer alignment, the ints' values, the scalars'
        types), else through triton.jit, which compiles it and hands it back."""
        fast = self._fast and device.type == "cuda"
        spec: tuple = ()
        if fast:
            spec = (variant, tuple(consts.values()), tuple(opts.values()), device.index,
                    tuple(a if type(a) is int else float if type(a) is float else
                          a.data_ptr() & 15 if hasattr(a, "data_ptr") else type(a)
                          for a in args))  # ints first: most arguments are sizes, strides
            kernel = launch.compiled.get(spec)
            if kernel is not None:
                try:
                    launch_compiled(kernel, grid, device, (*args, *consts.values()))
                    if self.recorder is not None:
                        self.recorder.run(kernel, grid, args, consts)
                    return
                except (AttributeError, TypeError):  # another Triton's launcher: use the JIT
                    self._fast = fast = False
        if self.recorder is not None:  # launched through the JIT: record a later call
            self.recorder.abandon()
        kernel = launch.fn[variant][grid](*args, **consts, **opts, **FP_FUSION)
        if fast and kernel is not None:
            launch.compiled.put(spec, kernel)
