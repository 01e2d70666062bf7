"""Flash attention forward (codegen_attn.py): one program per BLOCK_M query rows of each batch
index, keys looped; with few row blocks (decoding), flash-decoding splits each block's keys
over several programs and a combine runs the epilogue (codegen_decode.py)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from fusile import config
from fusile.backends.targets import Target
from fusile.backends.triton import tune
from fusile.backends.triton.aot_build import DEFAULT_HEAD_DIM, AotContext, KernelArtifact
from fusile.backends.triton.codegen_attn import AttnWriter
from fusile.backends.triton.constexprs import AttnConstexprs
from fusile.backends.triton.host import needs_i64
from fusile.backends.triton.kernel_source import KernelSource
from fusile.backends.triton.kinds.kind import Kind
from fusile.backends.triton.schedule import pow2
from fusile.backends.triton.tiled import Launch, dot_sizes, launch_tuned, split_count
from fusile.backends.triton.tune import DotConfig, amd_tile, tile


def candidates(target: Target, d: int, rows: int | None = None) -> list[DotConfig]:
    """Flash-attention tiles (block_m query rows, block_n keys), in the order H100 sweeps
    ranked them (benchmarks/RESULTS.md): at head dim 64, 128 query rows over 8 warps (two
    warpgroups of 64 rows) against 64 keys; at 128, that and 64 x 64 over 4 warps within a
    few percent of each other, 64 x 64 ahead when causal. AMD, after AMD's flash-attention
    guidance: 128 x 64, 4 warps, one stage, waves_per_eu 2. With `rows` (the query rows of a
    batch index) at most 16, as in decoding, 16-row tiles (the smallest a tensor-core dot
    takes) come first: a 128-row tile would compute 8-128x the scores for nothing and hold
    registers that deeper key pipelining can use."""
    if target.backend == "interpreter":
        return [tile(32, 32, warps=4, stages=1)]
    if rows is not None and rows <= 16:
        if target.backend == "hip":
            few = [amd_tile(16, 64, warps=4, stages=1, waves=2, group_m=1),
                   amd_tile(16, 128, warps=4, stages=1, waves=2, group_m=1)]
        else:
            few = [tile(16, 64, warps=4, stages=4), tile(16, 128, warps=4, stages=3),
                   tile(16, 64, warps=4, stages=3)]
        return few + candidates(target, d)
    if target.backend == "hip":
        return [amd_tile(128, 64, warps=4, stages=1, waves=2, group_m=1),
                amd_tile(128, 32, warps=4, stages=1, waves=2, group_m=1),
                amd_tile(64, 64, warps=4, stages=1, waves=2, group_m=1)]
    if d <= 64:
        return [tile(128, 64, warps=8, stages=4), tile(128, 64, warps=8, stages=3),
                tile(64, 64, warps=4, stages=3), tile(128, 64, warps=4, stages=3)]
    if d <= 128:
        return [tile(64, 64, warps=4, stages=3), tile(128, 64, warps=8, stages=3),
                tile(128, 64, warps=8, stages=4), tile(128, 128, warps=8, stages=3)]
    return [tile(64, 64, warps=4, stages=2), tile(128, 32, warps=8, stages=2),
            tile(64, 32, warps=4, stages=2)]


def constexprs(cfg: DotConfig, d: int, e: int, keys: int | None, use_i64: bool,
               pos_scale: bool | None = None) -> AttnConstexprs:
    """The head dims padded to powers of two (at least 16), whether both are their blocks
    (then the head-dim masks fold away), and whether BLOCK_N divides the key length `keys`
    (None: not known, as ahead of time; then the masks at the end stay)."""
    bd, be = max(16, pow2(d)), max(16, pow2(e))
    return AttnConstexprs(cfg.block_m, cfg.block_n, bd, be, d == bd and e == be,
                          keys is not None and keys % cfg.block_n == 0, use_i64, pos_scale)


def launch(prog: Any, launch: Launch, tensors: list[Any], args: tuple,
           sizes: dict[tuple, int], device: Any) -> None:
    dot, attn, sized = launch.ks.dot, launch.ks.attn, launch.sized
    assert dot is not None and attn is not None
    li, lj, d, batch = dot_sizes(launch, sizes)
    e = sizes[sized[attn.value_dim]]
    if li == 0 or batch == 0 or e == 0:
        return
    use_i64 = needs_i64(tensors)
    pos_scale = None
    if attn.scale is not None:  # the sign of a runtime score scale
        scalars = launch.ks.scalars
        pos_scale = args[len(args) - len(scalars) + scalars.index(attn.scale)] > 0
    shape = (li, lj, d, e, batch, use_i64, pos_scale)
    key = ("split keys", config.get("attn_splits"), shape)
    plan = launch.ready.get(key)
    if plan is None:  # decided once per shape (and knob value), as a tuned config is
        plan = launch.ready.put(key, split_plan(prog, launch, li, lj, d, e, batch, key[1],
                                                use_i64, pos_scale))
    if plan:  # few row blocks: split their keys
        launch_split_keys(prog, launch, plan, device, args)
        return
    launch_tuned(
        prog, launch, shape, 4 * li * lj * max(d, e) * batch,
        lambda: candidates(prog.target, max(d, e), li),
        lambda: (f"{launch.key}|{dot.dtype}|{tune.bucket(li, lj, max(d, e), batch)}",
                 f"attention {batch} x {li}x{lj}, d={d}"),
        lambda c: (batch * math.ceil(li / c.block_m),),
        lambda c: constexprs(c, d, e, lj, use_i64, pos_scale).values(), device, args)


def split_plan(prog: Any, launch: Launch, li: int, lj: int, d: int, e: int, batch: int,
               forced: int, use_i64: bool, pos_scale: bool | None) -> tuple:
    """Flash-decoding's launch for these sizes, or () to run the one-kernel flash path:
    (config, splits, chunk of keys, row blocks, constexprs), with the first candidate
    config (tiled.split_count says how many splits)."""
    first = candidates(prog.target, max(d, e), li)[0]
    programs = batch * math.ceil(li / first.block_m)
    count = split_count(prog.target, programs, lj, first.block_n, forced)
    if count <= 1 or "split" not in launch.fn:
        return ()
    chunk = math.ceil(lj / count / first.block_n) * first.block_n
    count = math.ceil(lj / chunk)  # no empty chunk at the end
    return first, count, chunk, programs, constexprs(first, d, e, lj, use_i64, pos_scale)


def launch_split_keys(prog: Any, launch: Launch, plan: tuple, device: Any, args: tuple
                      ) -> None:
    """Flash-decoding (codegen_decode.py): `splits` programs per row block, each over a
    chunk of keys (a multiple of BLOCK_N), into a float32 buffer of partials; then one
    program per row block combines them and runs the epilogue."""
    import torch

    cfg, count, chunk, programs, consts = plan
    parts = torch.empty(programs * count * cfg.block_m * (consts.block_e + 2),
                        dtype=torch.float32, device=device)
    if prog.recorder is not None:
        prog.recorder.alloc(parts)
    full = (*args, parts, count, chunk)
    opts, values = cfg.options(prog.target.backend), consts.values()
    prog.run_variant(launch, "split", (programs, count), values, opts, device, full)
    prog.run_variant(launch, "combine", (programs,), values, opts, device, full)


def compile(ctx: AotContext, ks: KernelSource) -> list[KernelArtifact]:
    # a head dim the signature leaves symbolic is 128 (not 4096) and keeps its masks, so the
    # kernel serves any head dim up to its block; a known one drops them when it is its block
    dot, attn = ks.dot, ks.attn
    assert dot is not None and attn is not None
    head_classes = (dot.k, attn.value_dim)
    heads = [ctx.size(ks, c, DEFAULT_HEAD_DIM) for c in head_classes]
    symbolic = any(ks.class_global[c] not in ctx.known for c in head_classes)
    keys = ctx.known.get(ks.class_global[dot.n])  # the looped length

    def consts(cfg: DotConfig) -> dict[str, Any]:
        # a runtime score scale is taken positive (the usual one)
        c = constexprs(cfg, heads[0], heads[1], keys, False,
                       True if attn.scale is not None else None)
        return (replace(c, even_heads=False) if symbolic else c).values()

    extra = [(ks.split_name, "programs x splits"), (ks.combine_name, "programs")] \
        if ks.split_name and ks.combine_name else []  # flash-decoding
    return ctx.first_fitting(ks, candidates(ctx.target, max(heads)), consts,
                             "batch * ceil(q_len / BLOCK_M)", extra)


def held(ks: KernelSource) -> list[int]:
    """The head dims: a program holds its q tile and accumulator whole."""
    assert ks.dot is not None and ks.attn is not None
    return [ks.dot.k, ks.attn.value_dim]


KIND = Kind("flash", lambda k: k.attn is not None,
            lambda *a: AttnWriter(*a).source(), launch, compile, held)
