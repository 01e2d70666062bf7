"""Contractions (codegen_dot.py): tiles of the result, batch flattened into the grid, the
config tuned per shape bucket on first use on a GPU (tune.py)."""

from __future__ import annotations

import math
from typing import Any

from fusile.backends.triton import tune
from fusile.backends.triton.aot_build import AotContext, KernelArtifact
from fusile.backends.triton.codegen_dot import DotWriter
from fusile.backends.triton.host import needs_i64
from fusile.backends.triton.kernel_source import KernelSource
from fusile.backends.triton.kinds.kind import Kind
from fusile.backends.triton.launch import dot_grid
from fusile.backends.triton.tiled import Launch, launch_tuned


def launch(prog: Any, launch: Launch, tensors: list[Any], args: tuple,
           sizes: dict[tuple, int], device: Any) -> None:
    dot, sized = launch.ks.dot, launch.sized
    assert dot is not None
    m, n, k = (sizes[sized[c]] for c in (dot.m, dot.n, dot.k))
    batch = math.prod(sizes[sized[c]] for c in dot.batch)
    if m == 0 or n == 0 or batch == 0:
        return
    use_i64 = needs_i64(tensors)
    launch_tuned(
        prog, launch, (m, n, k, batch, use_i64), 2 * m * n * k * batch,
        lambda: tune.candidates(prog.target, dot.dtype, m, n, k, batch, dot.prologue),
        lambda: (f"{launch.key}|{dot.dtype}|{tune.bucket(m, n, k, batch)}",
                 f"{f'{batch} x ' if batch > 1 else ''}{m}x{k} @ {k}x{n}"),
        lambda c: dot_grid(c, m, n, batch), lambda c: c.constexprs(k, use_i64), device, args)


def compile(ctx: AotContext, ks: KernelSource) -> list[KernelArtifact]:
    dot = ks.dot
    assert dot is not None
    m, n, k = (ctx.size(ks, c) for c in (dot.m, dot.n, dot.k))
    batch = math.prod(ctx.size(ks, c) for c in dot.batch)
    return [ctx.build(ks, ks.name, dcfg.constexprs(k, False), dcfg.options(ctx.target.backend),
                      (dcfg.block_m, dcfg.block_n),
                      "batch * ceil(M / BLOCK_M) * ceil(N / BLOCK_N)")
            for dcfg in ctx.dot_configs or tune.candidates(ctx.target, dot.dtype, m, n, k,
                                                           batch, dot.prologue)[:1]]


KIND = Kind("dot", lambda k: k.dot is not None,
            lambda *a: DotWriter(*a).source(), launch, compile)
