"""Contractions whose rows are reduced on chip (codegen_dot_rows.py): one program per BLOCK_M
rows of each batch index, looping over the columns; when those programs leave SMs idle, the
columns split over several programs per row block and a combine merges their partials.

Tiles, NVIDIA: 128 x 128 x 64 over 8 warps, 3 stages, as a contraction kernel's large tile
(the row statistics add a few registers per row), from 512 rows up: a tile reads (BLOCK_M +
BLOCK_N) x K operands for BLOCK_M x BLOCK_N x K products, so 64-row tiles would move 1.5x the
operand bytes through L2 at a language model's head (8192 x 4096 x 128256), and the column
splits fill the SMs either way; 64 x 128 x 64 over 4 warps for fewer rows (a decode step's).
AMD (CDNA3), after AMD's Triton guidance for GEMMs: BLOCK_K 64, 2 stages, 16x16 MFMA, kpack
2. Not yet tuned per shape on a GPU (the first candidate runs)."""

from __future__ import annotations

import math
from typing import Any

from fusile import config
from fusile.backends.targets import Target
from fusile.backends.triton.aot_build import AotContext, KernelArtifact
from fusile.backends.triton.codegen_dot_rows import DotRowsWriter
from fusile.backends.triton.constexprs import DotRowsConstexprs
from fusile.backends.triton.host import needs_i64
from fusile.backends.triton.kernel_source import KernelSource
from fusile.backends.triton.kinds.kind import Kind
from fusile.backends.triton.tiled import Launch, dot_sizes, split_count
from fusile.backends.triton.tune import DotConfig, amd_tile, tile
from fusile.lowering.groups import DOT_ROWS


def candidates(target: Target, dtype: str, rows: int) -> list[DotConfig]:
    if target.backend == "interpreter":
        return [tile(32, 32, 32, warps=4, stages=1)]
    if target.backend == "hip":
        k = 32 if dtype == "f32" else 64
        return [amd_tile(128, 128, k, warps=8, stages=2, waves=0, kpack=2),
                amd_tile(64, 128, k, warps=4, stages=2, waves=2, kpack=2)]
    if dtype == "f32":
        return [tile(64, 64, 32, warps=4, stages=3), tile(32, 64, 32, warps=4, stages=3)]
    big, small = tile(128, 128, 64, warps=8, stages=3), tile(64, 128, 64, warps=4, stages=3)
    return [big, small] if rows >= 512 else [small, big]


def constexprs(cfg: DotConfig, k: int, use_i64: bool) -> DotRowsConstexprs:
    return DotRowsConstexprs(cfg.block_m, cfg.block_n, cfg.block_k, k % cfg.block_k == 0,
                             use_i64)


def launch(prog: Any, launch: Launch, tensors: list[Any], args: tuple,
           sizes: dict[tuple, int], device: Any) -> None:
    dot = launch.ks.dot
    assert dot is not None
    m, n, k, batch = dot_sizes(launch, sizes)
    if m == 0 or batch == 0:
        return
    use_i64 = needs_i64(tensors)
    shape = (m, n, k, batch, use_i64, config.get("dot_rows_splits"))
    plan = launch.ready.get(shape)
    if plan is None:  # decided once per shape (and knob value)
        cfg = candidates(prog.target, dot.dtype, m * batch)[0]
        programs = batch * math.ceil(m / cfg.block_m)
        count = split_count(prog.target, programs, n, cfg.block_n, shape[-1])
        chunk = max(1, math.ceil(n / count / cfg.block_n)) * cfg.block_n  # n may be 0
        count = max(1, math.ceil(n / chunk))  # no empty chunk at the end
        plan = launch.ready.put(shape, (programs, count, chunk, constexprs(cfg, k, use_i64)
                                        .values(), cfg.options(prog.target.backend)))
    programs, count, chunk, values, opts = plan
    if count == 1:
        prog.run_variant(launch, "main", (programs,), values, opts, device, args)
        return
    import torch

    parts = torch.empty(launch.ks.n_parts * programs * count * values["BLOCK_M"],
                        dtype=torch.float32, device=device)
    if prog.recorder is not None:
        prog.recorder.alloc(parts)
    full = (*args, parts, count, chunk)
    prog.run_variant(launch, "split", (programs, count), values, opts, device, full)
    prog.run_variant(launch, "combine", (programs,), values, opts, device, full)


def compile(ctx: AotContext, ks: KernelSource) -> list[KernelArtifact]:
    dot = ks.dot
    assert dot is not None and ks.split_name and ks.combine_name
    m, k = ctx.size(ks, dot.m), ctx.size(ks, dot.k)
    batch = math.prod(ctx.size(ks, c) for c in dot.batch)
    return ctx.first_fitting(ks, candidates(ctx.target, dot.dtype, m * batch),
                             lambda cfg: constexprs(cfg, k, False).values(),
                             "batch * ceil(M / BLOCK_M)",
                             [(ks.split_name, "programs x splits"), (ks.combine_name, "programs")])


KIND = Kind("dot-rows", lambda k: k.kind == DOT_ROWS,
            lambda *a: DotRowsWriter(*a).source(), launch, compile)
