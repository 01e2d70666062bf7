"""Launch a compiled program's kernels on torch tensors (CUDA/ROCm, or the interpreter on CPU).

Everything that does not depend on the call's sizes is done once per signature (plan, source,
module, argument recipes); a call binds sizes, allocates outputs and launches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fusile.backends.reference import _scalar
from fusile.backends.targets import Target
from fusile.backends.torch_dtypes import to_torch
from fusile.backends.triton import cache
from fusile.backends.triton.codegen import KernelSource, generate
from fusile.dsl.errors import BackendError
from fusile.lowering import schedule
from fusile.lowering.graph import Graph, Op
from fusile.lowering.partition import POINTWISE, Plan, partition


def tensor_names(graph: Graph, param_names: list[str]) -> dict[int, str]:
    """Readable kernel argument names: parameters by name, results out0.., others t<id>."""
    names: dict[int, str] = {}
    for vid, name in zip(graph.args, param_names, strict=True):
        names[vid] = name
    for i, r in enumerate(graph.results):
        names.setdefault(r, f"out{i}")
    for t in graph.tensors:
        names.setdefault(t, f"t{t}")
    return names


@dataclass
class _Launch:
    ks: KernelSource
    fn: Any
    r_contiguous: bool
    elem_bytes: int


class TritonProgram:
    """One compiled signature on one target family, ready to launch."""

    def __init__(self, compiled: Any, target: Target):
        graph: Graph = compiled.fused_graph
        self.graph = graph
        self.target = target
        self.plan: Plan = partition(graph)
        params = [compiled.typed.func.params[i].name for i in compiled.runtime_params]
        self.names = tensor_names(graph, params)
        family = "interpreter" if target.backend == "interpreter" else "gpu"
        self.source, kernels = generate(self.plan, family, self.names)
        module = cache.load_module(self.source)
        self.launches: list[_Launch] = []
        for ks in kernels:
            fns = {"single": getattr(module, ks.name)}
            if ks.looped_name:
                fns["looped"] = getattr(module, ks.looped_name)
            if family == "interpreter":
                from triton.runtime.interpreter import InterpretedFunction

                fns = {k: InterpretedFunction(f.fn) for k, f in fns.items()}
            main = max((t for t in ks.tensors), key=lambda t: len(t.classes), default=None)
            r_contig = bool(main and main.classes and main.classes[-1] in ks.r_classes)
            elem = max((t.dtype.bits // 8 for t in ks.tensors if t.dtype.bits >= 8), default=4)
            self.launches.append(_Launch(ks, fns, r_contig or ks.kind == POINTWISE, elem))
        self._class_source = self._size_sources()
        self._host_ops = [n for n in graph.nodes if isinstance(n, Op)]

    def _size_sources(self) -> dict[tuple, tuple[int, int] | int]:
        """class -> (runtime arg position, axis) or a static size."""
        src: dict[tuple, tuple[int, int] | int] = {}
        for pos, a in enumerate(self.graph.args):
            info = self.graph.tensors.get(a)
            if info is None:
                continue
            for axis in range(len(info.shape)):
                src.setdefault(self.plan.tensor_class(a, axis), (pos, axis))
        for t, info in self.graph.tensors.items():
            for axis, s in enumerate(info.shape):
                if s is not None:
                    src.setdefault(self.plan.tensor_class(t, axis), s)
        return src

    def __call__(self, args: list[Any]) -> list[Any]:
        import torch

        graph = self.graph
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        if device is None:
            raise BackendError("a fused call needs at least one tensor argument")
        env: dict[int, Any] = dict(zip(graph.args, args, strict=True))
        for op in self._host_ops:  # sizes and scalar math, on the host
            env[op.results[0]] = _scalar(op, env, None)
        sizes: dict[tuple, int] = {}
        for c, s in self._class_source.items():
            sizes[c] = s if isinstance(s, int) else int(args[s[0]].shape[s[1]])
        for launch in self.launches:
            self._launch(launch, env, sizes, device)
        outs = []
        for r in graph.results:
            v = env[r]
            outs.append(v.clone() if r in graph.args else v)
        return outs

    def _launch(self, launch: _Launch, env: dict[int, Any], sizes: dict[tuple, int],
                device: Any) -> None:
        import torch

        ks = launch.ks
        tensors = []
        for ta in ks.tensors:
            if ta.is_output and ta.tid not in env:
                info = self.graph.tensors[ta.tid]
                shape = [s if s is not None else sizes[self.plan.tensor_class(ta.tid, k)]
                         for k, s in enumerate(info.shape)]
                env[ta.tid] = torch.empty(shape, dtype=to_torch(info.dtype), device=device)
            tensors.append(env[ta.tid])
        strides = [t.stride(axis) for t, ta in zip(tensors, ks.tensors, strict=True)
                   for axis, c in enumerate(ta.classes) if c is not None]
        class_sizes = [sizes[c] for c in ks.classes]
        scalars = [_py(env[v]) for v in ks.scalars]
        p_total = math.prod(sizes[c] for c in ks.p_classes)
        r_total = math.prod(sizes[c] for c in ks.r_classes)
        if p_total == 0 or (r_total == 0 and ks.kind == POINTWISE):
            return
        if ks.kind == POINTWISE:
            cfg = schedule.pointwise(p_total, r_total, self.target, launch.elem_bytes)
            grid = (math.ceil(p_total / cfg.block_p) * math.ceil(r_total / cfg.block_r),)
        else:
            cfg = schedule.reduction(p_total, r_total, self.target, launch.elem_bytes,
                                     launch.r_contiguous)
            grid = (math.ceil(p_total / cfg.block_p),)
        use_i64 = any(_extent(t) >= 2**31 - 1 for t in tensors) or \
            p_total * r_total >= 2**31 - 1
        fn = launch.fn["looped" if cfg.looped else "single"]
        fn[grid](*tensors, *strides, *class_sizes, *scalars, BLOCK_P=cfg.block_p,
                 BLOCK_R=cfg.block_r, USE_I64=use_i64, num_warps=cfg.num_warps,
                 num_stages=cfg.num_stages)


def _extent(t: Any) -> int:
    return 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride(), strict=True))


def _py(v: Any) -> Any:
    import numpy as np

    if isinstance(v, np.generic | np.ndarray):
        v = v.item()
    return v
