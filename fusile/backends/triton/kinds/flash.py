"""Flash attention forward (codegen_attn.py): one program per BLOCK_M query rows of each batch
index, keys looped; with few row blocks (decoding), flash-decoding splits each block's keys
over several programs and a combine runs the epilogue (codegen_decode.py)."""

from __future__ import annotations

import math
from typing import Any

from fusile import config
from fusile.backends.triton import tune
from fusile.backends.triton.aot_build import DEFAULT_HEAD_DIM, AotContext, KernelArtifact
from fusile.backends.triton.codegen_attn import AttnWriter
from fusile.backends.triton.host import needs_i64
from fusile.backends.triton.kernel_source import KernelSource
from fusile.backends.triton.kinds.kind import Kind
from fusile.backends.triton.tiled import Launch, launch_tuned


def launch(prog: Any, launch: Launch, tensors: list[Any], args: tuple,
           sizes: dict[tuple, int], device: Any) -> None:
    dot, attn, sized = launch.ks.dot, launch.ks.attn, launch.sized
    assert dot is not None and attn is not None
    li, lj, d = (sizes[sized[c]] for c in (dot.m, dot.n, dot.k))
    e = sizes[sized[attn.value_dim]]
    batch = math.prod(sizes[sized[c]] for c in dot.batch)
    if li == 0 or batch == 0 or e == 0:
        return
    use_i64 = needs_i64(tensors)
    extra = {}
    if attn.scale is not None:  # the sign of a runtime score scale
        scalars = launch.ks.scalars
        extra["POS_SCALE"] = args[len(args) - len(scalars) + scalars.index(attn.scale)] > 0
    shape = (li, lj, d, e, batch, use_i64, *extra.values())
    key = ("split keys", config.get("attn_splits"), shape)
    plan = launch.ready.get(key)
    if plan is None:  # decided once per shape (and knob value), as a tuned config is
        plan = launch.ready.put(key, split_plan(prog, launch, li, lj, d, e, batch, key[1],
                                                use_i64, extra))
    if plan:  # few row blocks: split their keys
        launch_split_keys(prog, launch, plan, device, args)
        return
    launch_tuned(
        prog, launch, shape, 4 * li * lj * max(d, e) * batch,
        lambda: tune.attention_candidates(prog.target, max(d, e), li),
        lambda: (f"{launch.key}|{dot.dtype}|{tune.bucket(li, lj, max(d, e), batch)}",
                 f"attention {batch} x {li}x{lj}, d={d}"),
        lambda c: (batch * math.ceil(li / c.block_m),),
        lambda c: tune.attention_constexprs(c, d, e, lj, use_i64) | extra, device, args)


def split_plan(prog: Any, launch: Launch, li: int, lj: int, d: int, e: int, batch: int,
               forced: int, use_i64: bool, extra: dict[str, Any]) -> tuple:
    """Flash-decoding's launch for these sizes, or () to run the one-kernel flash path:
    (config, splits, chunk of keys, row blocks, constexprs), with the first candidate
    config (tune.attention_splits says how many splits)."""
    first = tune.attention_candidates(prog.target, max(d, e), li)[0]
    programs = batch * math.ceil(li / first.block_m)
    splits = tune.attention_splits(prog.target, programs, lj, first.block_n, forced)
    if splits <= 1 or "split" not in launch.fn:
        return ()
    chunk = math.ceil(lj / splits / first.block_n) * first.block_n
    splits = math.ceil(lj / chunk)  # no empty chunk at the end
    consts = tune.attention_constexprs(first, d, e, lj, use_i64) | extra
    return first, splits, chunk, programs, consts


def launch_split_keys(prog: Any, launch: Launch, plan: tuple, device: Any, args: tuple
                      ) -> None:
    """Flash-decoding (codegen_decode.py): `splits` programs per row block, each over a
    chunk of keys (a multiple of BLOCK_N), into a float32 buffer of partials; then one
    program per row block combines them and runs the epilogue."""
    import torch

    cfg, splits, chunk, programs, consts = plan
    parts = torch.empty(programs * splits * cfg.block_m * (consts["BLOCK_E"] + 2),
                        dtype=torch.float32, device=device)
    if prog.recorder is not None:
        prog.recorder.alloc(parts)
    full = (*args, parts, splits, chunk)
    opts = cfg.options(prog.target.backend)
    prog.run_variant(launch, "split", (programs, splits), consts, opts, device, full)
    prog.run_variant(launch, "combine", (programs,), consts, opts, device, full)


def compile(ctx: AotContext, ks: KernelSource) -> list[KernelArtifact]:
    # a head dim the signature leaves symbolic is 128 (not 4096) and keeps its masks, so the
    # kernel serves any head dim up to its block; a known one drops them when it is its block
    dot, attn = ks.dot, ks.attn
    assert dot is not None and attn is not None
    head_classes = (dot.k, attn.value_dim)
    heads = [ctx.size(ks, c, DEFAULT_HEAD_DIM) for c in head_classes]
    symbolic = any(ks.class_global[c] not in ctx.known for c in head_classes)
    keys = ctx.known.get(ks.class_global[dot.n])  # the looped length

    def consts(cfg: Any) -> dict[str, Any]:
        c = tune.attention_constexprs(cfg, heads[0], heads[1], keys, False)
        if attn.scale is not None:
            c["POS_SCALE"] = True  # a positive score scale (the usual one)
        if symbolic:
            c["EVEN_HEADS"] = False
        return c

    extra = [(ks.split_name, "programs x splits"), (ks.combine_name, "programs")] \
        if ks.split_name and ks.combine_name else []  # flash-decoding
    return ctx.first_fitting(ks, tune.attention_candidates(ctx.target, max(heads)), consts,
                             "batch * ceil(q_len / BLOCK_M)", extra)


KIND = Kind("flash", lambda k: k.attn is not None,
            lambda *a: AttnWriter(*a).source(), launch, compile)
