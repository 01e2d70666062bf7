"""Contractions (codegen_dot.py): tiles of the result, batch flattened into the grid, the
config tuned per shape bucket on first use on a GPU (tune.py) among this kind's candidates.

NVIDIA (Hopper): 128x256 tiles with 8 warps and 3-4 stages for large products, as in Triton's
matmul tutorial (256x128 spills with an epilogue); smaller tiles and more stages when the grid
would not fill the SMs.
AMD (CDNA3), after AMD's Triton optimisation guide: BLOCK_K 64, num_stages 2 (the stream
pipeliner wants 2 for a single GEMM), matrix_instr_nonkdim 16 (16x16 MFMA), kpack 2, and
waves_per_eu to trade registers for occupancy."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fusile.backends.targets import Target
from fusile.backends.triton import tune
from fusile.backends.triton.aot_build import AotContext, KernelArtifact
from fusile.backends.triton.codegen_dot import DotWriter
from fusile.backends.triton.constexprs import DotConstexprs
from fusile.backends.triton.host import needs_i64
from fusile.backends.triton.kernel_source import KernelSource
from fusile.backends.triton.kinds.kind import Kind
from fusile.backends.triton.schedule import pow2
from fusile.backends.triton.tiled import Launch, dot_sizes, launch_tuned
from fusile.backends.triton.tune import DotConfig, amd_tile, tile


def _cuda(dtype: str, tiles: Callable[[int, int], int], sms: int, k: int) -> list[DotConfig]:
    if dtype == "f32":  # IEEE float32 runs on FMA units: smaller tiles, deeper pipelines
        return [tile(64, 64, 32, warps=4, stages=3), tile(128, 64, 32, warps=4, stages=3),
                tile(64, 128, 32, warps=4, stages=3), tile(32, 64, 32, warps=4, stages=3)]
    big = [tile(128, 256, 64, warps=8, stages=3), tile(128, 128, 64, warps=8, stages=4),
           tile(128, 256, 32, warps=8, stages=4), tile(128, 256, 64, warps=8, stages=4)]
    small = [tile(128, 64, 64, warps=4, stages=4), tile(64, 128, 64, warps=4, stages=4),
             tile(64, 64, 64, warps=4, stages=4)]
    if k % 16:  # rows of K elements are no multiple of 16: Triton cannot prove 16-byte
        # alignment, so each operand element is its own load; 64-deep tiles over 4 stages
        # then spilled on sm_90 (128x64x64: 255 registers, 672 bytes at 512x100 @ 100x512)
        # where 32-deep tiles over 3 stages did not
        narrow = [tile(128, 128, 32, warps=8, stages=3), tile(64, 64, 32, warps=4, stages=3)]
        return (narrow if tiles(128, 128) >= sms else narrow[::-1]) + big[:2] + small
    if tiles(128, 256) >= sms:
        return big + small
    if tiles(128, 128) >= sms:
        return big[1:2] + small + big[:1] + big[2:]
    return small + big[1:2]


def _hip(dtype: str, tiles: Callable[[int, int], int], cus: int, prologue: bool
         ) -> list[DotConfig]:
    k = 32 if dtype == "f32" else 64
    # waves 0 leaves the register budget to the compiler (AGPRs hold the accumulator); 2
    # asks for two waves per SIMD, which heavy prologues cannot always afford
    big = [amd_tile(256, 128, k, warps=8, stages=2, waves=0, kpack=2),
           amd_tile(128, 256, k, warps=8, stages=2, waves=2, kpack=2),
           amd_tile(128, 128, k, warps=4, stages=2, waves=2, kpack=2),
           amd_tile(256, 128, k, warps=8, stages=2, waves=2, kpack=2)]
    small = [amd_tile(64, 64, k, warps=4, stages=2, waves=0),
             amd_tile(128, 64, k, warps=4, stages=2, waves=2, kpack=2)]
    if tiles(256, 128) >= cus and not prologue:
        return big + small
    if prologue:  # operands computed in registers: 128x128 tiles over 8 warps
        return [amd_tile(128, 128, k, warps=8, stages=2, waves=0, kpack=2), *big, *small]
    return [big[2], *small, big[0]]


def candidates(target: Target, dtype: str, m: int, n: int, k: int, batch: int = 1,
               prologue: bool = False) -> list[DotConfig]:
    """Configs to try for an (m x k) @ (k x n) product, `batch` of them; the first is the
    rule-based pick. `prologue`: the operands are computed from their loads (not only cast)."""

    def tiles(bm: int, bn: int) -> int:
        return batch * -(-m // bm) * -(-n // bn)

    if target.backend == "interpreter":
        return [tile(32, 32, 32, warps=4, stages=1, group_m=4)]
    if target.backend == "hip":
        return _shallow(_hip(dtype, tiles, target.compute_units, prologue), k)
    return _shallow(_cuda(dtype, tiles, target.compute_units, k), k)


def _shallow(configs: list[DotConfig], k: int) -> list[DotConfig]:
    """Tiles no deeper than K needs (the least depth tl.dot takes, 16, that covers K), in one
    stage when one step covers K. A 64-deep tile of a K = 2 product computed its operand
    prologue on 62 masked columns for nothing (exp(x) @ x.mT at 2x2 in f16 spilled 1776 bytes
    on sm_90 at every candidate), and three stages of a single step of a float32 product with
    such a prologue spilled 1764 bytes (K = 31; both found by the property suite)."""
    depth = max(16, pow2(k))
    out: list[DotConfig] = []
    for c in configs:
        if c.block_k >= k:  # one step: nothing to pipeline
            c = replace(c, block_k=min(c.block_k, depth), num_stages=1)
        if c not in out:
            out.append(c)
    return out


def constexprs(cfg: DotConfig, k: int, use_i64: bool) -> DotConstexprs:
    return DotConstexprs(cfg.block_m, cfg.block_n, cfg.block_k, cfg.group_m,
                         k % cfg.block_k == 0, use_i64)


def grid(cfg: DotConfig, m: int, n: int, batch: int) -> tuple[int]:
    return (batch * math.ceil(m / cfg.block_m) * math.ceil(n / cfg.block_n),)


def launch(prog: Any, launch: Launch, tensors: list[Any], args: tuple,
           sizes: dict[tuple, int], device: Any) -> None:
    dot = launch.ks.dot
    assert dot is not None
    m, n, k, batch = dot_sizes(launch, sizes)
    if m == 0 or n == 0 or batch == 0:
        return
    use_i64 = needs_i64(tensors)
    launch_tuned(
        prog, launch, (m, n, k, batch, use_i64), 2 * m * n * k * batch,
        lambda: candidates(prog.target, dot.dtype, m, n, k, batch, dot.prologue),
        lambda: (f"{launch.key}|{dot.dtype}|{tune.bucket(m, n, k, batch)}",
                 f"{f'{batch} x ' if batch > 1 else ''}{m}x{k} @ {k}x{n}"),
        lambda c: grid(c, m, n, batch), lambda c: constexprs(c, k, use_i64).values(), device,
        args)


def compile(ctx: AotContext, ks: KernelSource) -> list[KernelArtifact]:
    dot = ks.dot
    assert dot is not None
    m, n, k = (ctx.size(ks, c) for c in (dot.m, dot.n, dot.k))
    batch = math.prod(ctx.size(ks, c) for c in dot.batch)
    return [ctx.build(ks, ks.name, constexprs(cfg, k, False).values(),
                      cfg.options(ctx.target.backend), (cfg.block_m, cfg.block_n),
                      "batch * ceil(M / BLOCK_M) * ceil(N / BLOCK_N)")
            for cfg in ctx.dot_configs or candidates(ctx.target, dot.dtype, m, n, k, batch,
                                                     dot.prologue)[:1]]


KIND = Kind("dot", lambda k: k.dot is not None,
            lambda *a: DotWriter(*a).source(), launch, compile)
