"""Flash attention backward (codegen_grad.py): a program per BLOCK_M kept positions, looping
the other axis, scores recomputed from the forward's log-sum-exp."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from fusile.backends.targets import Target
from fusile.backends.triton import tune
from fusile.backends.triton.aot_build import DEFAULT_HEAD_DIM, AotContext, KernelArtifact
from fusile.backends.triton.codegen_grad import GradWriter
from fusile.backends.triton.constexprs import GradConstexprs
from fusile.backends.triton.host import needs_i64
from fusile.backends.triton.kernel_source import KernelSource
from fusile.backends.triton.kinds.kind import Kind
from fusile.backends.triton.schedule import pow2
from fusile.backends.triton.tiled import Launch, launch_tuned
from fusile.backends.triton.tune import DotConfig, amd_tile, tile


def candidates(target: Target, d: int) -> list[DotConfig]:
    """Flash-backward tiles (block_m kept positions, block_n looped ones). Each program holds
    one float32 accumulator per out dot (two for dk and dv) of block_m x d, so the kept block
    is 64-128 with a short looped block, as in FlashAttention 2's backward. Hopper, in the
    order the H100's tuning logs ranked them: 64 x 128 first at head dim 64, 64 x 64 at 128
    (128 x 32 over 4 warps is left out: Triton 3.6's ptxas crashes on it at head dim 64).
    AMD: 4 warps, one stage, waves_per_eu 1 (register-heavy), after AMD's Triton guidance."""
    if target.backend == "interpreter":
        return [tile(32, 16, warps=4, stages=1)]
    if target.backend == "hip":
        return [amd_tile(64, 32, warps=4, stages=1, waves=1, group_m=1),
                amd_tile(128, 32, warps=4, stages=1, waves=1, group_m=1),
                amd_tile(64, 64, warps=4, stages=1, waves=1, group_m=1)]
    if d <= 64:
        return [tile(64, 128, warps=4, stages=2), tile(128, 64, warps=8, stages=3),
                tile(64, 64, warps=4, stages=3), tile(64, 128, warps=4, stages=3),
                tile(128, 64, warps=8, stages=2), tile(64, 64, warps=4, stages=2),
                tile(128, 32, warps=8, stages=3)]
    if d <= 128:
        return [tile(64, 64, warps=4, stages=2), tile(64, 32, warps=4, stages=3),
                tile(64, 32, warps=4, stages=2), tile(128, 64, warps=8, stages=2),
                tile(128, 32, warps=8, stages=3)]
    return [tile(64, 32, warps=4, stages=1), tile(32, 32, warps=4, stages=2),
            tile(64, 16, warps=4, stages=1)]


def constexprs(cfg: DotConfig, heads: list[int], looped: int | None, use_i64: bool
               ) -> GradConstexprs:
    """Each head dim padded to a power of two >= 16, whether every head dim is its block, and
    whether BLOCK_N divides the looped length (None: not known)."""
    blocks = tuple(max(16, pow2(h)) for h in heads)
    return GradConstexprs(cfg.block_m, cfg.block_n, blocks,
                          all(h == b for h, b in zip(heads, blocks, strict=True)),
                          looped is not None and looped % cfg.block_n == 0, use_i64)


def launch(prog: Any, launch: Launch, tensors: list[Any], args: tuple,
           sizes: dict[tuple, int], device: Any) -> None:
    dot, grad, sized = launch.ks.dot, launch.ks.grad, launch.sized
    assert dot is not None and grad is not None
    keep, loop = sizes[sized[dot.m]], sizes[sized[dot.n]]
    heads = [sizes[sized[c]] for c in grad.heads]
    batch = math.prod(sizes[sized[c]] for c in dot.batch)
    if keep == 0 or batch == 0 or 0 in heads:
        return
    use_i64 = needs_i64(tensors)
    flops = 2 * keep * loop * batch * sum(sizes[sized[c]] for c in grad.per_dot)
    launch_tuned(
        prog, launch, (keep, loop, *heads, batch, use_i64), flops,
        lambda: candidates(prog.target, max(heads)),
        lambda: (f"{launch.key}|{dot.dtype}|{tune.bucket(keep, loop, max(heads), batch)}",
                 f"attention backward {batch} x {keep}x{loop}, d={max(heads)}"),
        lambda c: (batch * math.ceil(keep / c.block_m),),
        lambda c: constexprs(c, heads, loop, use_i64).values(), device, args)


def compile(ctx: AotContext, ks: KernelSource) -> list[KernelArtifact]:
    dot, grad = ks.dot, ks.grad
    assert dot is not None and grad is not None
    heads = [ctx.size(ks, c, DEFAULT_HEAD_DIM) for c in grad.heads]
    symbolic = any(ks.class_global[c] not in ctx.known for c in grad.heads)
    keys = ctx.known.get(ks.class_global[dot.n])  # the looped length

    def consts(cfg: DotConfig) -> dict[str, Any]:
        c = constexprs(cfg, heads, keys, False)
        return (replace(c, even_heads=False) if symbolic else c).values()

    return ctx.first_fitting(ks, candidates(ctx.target, max(heads)), consts,
                             "batch * ceil(kept_len / BLOCK_M)", [])


def held(ks: KernelSource) -> list[int]:
    """The head dims: a program holds its kept operands and accumulators whole."""
    assert ks.grad is not None
    return list(ks.grad.heads)


KIND = Kind("flash_grad", lambda k: k.grad is not None,
            lambda *a: GradWriter(*a).source(), launch, compile, held)
