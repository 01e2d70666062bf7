"""Row kernels: pointwise, row reductions (held whole, looped, or split over row ranges for a
long column reduction) and rows with column partials (persistent row programs, then a combine
over the columns). Written by codegen.py; configs from schedule.py."""

from __future__ import annotations

import math
from typing import Any

from fusile.backends.torch_dtypes import to_torch
from fusile.backends.triton import schedule
from fusile.backends.triton.aot_build import AotContext, KernelArtifact
from fusile.backends.triton.codegen import RowWriter
from fusile.backends.triton.constexprs import RowConstexprs
from fusile.backends.triton.host import needs_i64
from fusile.backends.triton.kernel_source import KernelSource
from fusile.backends.triton.kinds.kind import Kind
from fusile.backends.triton.tiled import Launch
from fusile.bounded import Bounded
from fusile.lowering.partition import POINTWISE, ROW_COLUMNS


def elem_bytes(ks: KernelSource) -> int:
    """The element size a kernel's 16-byte accesses are counted in (schedule.py): the widest
    element of the tensors that run along its rows (an R axis). A tensor with one value per
    row (a cross-entropy's int64 targets, a norm's float32 statistics) is read or written
    once per row, so it does not narrow the rows' accesses: counting it gave a cross-entropy
    over bf16 logits 4 elements a thread, 32 warps on a 4096 row, 3x its log-sum-exp's time."""
    r = set(ks.r_classes)
    wide = [t.dtype.bits // 8 for t in ks.tensors if t.dtype.bits >= 8]
    along = [t.dtype.bits // 8 for t in ks.tensors
             if t.dtype.bits >= 8 and r & {c for c in t.classes if c is not None}]
    return max(along or wide, default=4)


def r_contiguous(ks: KernelSource) -> bool:
    """Whether the kernel's rows run along its widest tensor's contiguous axis (a pointwise
    kernel's always do)."""
    main = max((t for t in ks.tensors), key=lambda t: len(t.classes), default=None)
    return ks.kind == POINTWISE or bool(main and main.classes and
                                        main.classes[-1] in ks.r_classes)


def config(ks: KernelSource, p_total: int, r_total: int, target: Any
           ) -> tuple[schedule.Config, tuple[int]]:
    """The schedule's config for these row and column counts, and its grid."""
    if ks.kind == POINTWISE:
        cfg = schedule.pointwise(p_total, r_total, target, elem_bytes(ks))
        return cfg, (blocks(p_total, cfg.block_p) * blocks(r_total, cfg.block_r),)
    cfg = schedule.reduction(p_total, r_total, target, elem_bytes(ks), r_contiguous(ks),
                             ks.kind == ROW_COLUMNS)
    return cfg, (blocks(p_total, cfg.block_p),)


def blocks(total: int, block: int) -> int:
    """Blocks along a grid axis, at least one: a kernel runs when an axis is empty only
    for a result that does not span it (empty_grid), and its one block masks the rest."""
    return max(1, math.ceil(total / block))


def empty_grid(ks: KernelSource, tensors: list[Any], p_total: int, r_total: int) -> bool:
    """Nothing to compute: the grid is empty (no rows; a pointwise kernel's empty rows) and
    so is every result. A result that spans neither (a one-element value joined to a kernel
    over an empty batch) still needs the kernel: it was left unwritten."""
    empty = (p_total == 0 and ks.kind != ROW_COLUMNS) or \
        (r_total == 0 and ks.kind == POINTWISE)
    return empty and not any(t.numel() for t, ta in zip(tensors, ks.tensors, strict=True)
                             if ta.is_output)


def constexprs(cfg: schedule.Config, use_i64: bool) -> RowConstexprs:
    return RowConstexprs(cfg.block_p, cfg.block_r, use_i64)


def options(cfg: schedule.Config) -> dict[str, Any]:
    return {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


# (config, use_i64) -> its constexprs and options, read on every launch (not to be mutated)
_VALUES: Bounded[tuple[schedule.Config, bool], tuple[dict[str, Any], dict[str, Any]]] = Bounded()


def _run(prog: Any, launch: Launch, variant: str, grid: tuple[int, ...], cfg: schedule.Config,
         use_i64: bool, device: Any, args: tuple) -> None:
    got = _VALUES.get((cfg, use_i64))
    if got is None:
        got = _VALUES.put((cfg, use_i64), (constexprs(cfg, use_i64).values(), options(cfg)))
    prog.run_variant(launch, variant, grid, got[0], got[1], device, args)


def launch(prog: Any, launch: Launch, tensors: list[Any], args: tuple,
           sizes: dict[tuple, int], device: Any) -> None:
    ks, sized = launch.ks, launch.sized
    p_total = math.prod(sizes[sized[c]] for c in ks.p_classes)
    r_total = math.prod(sizes[sized[c]] for c in ks.r_classes)
    if empty_grid(ks, tensors, p_total, r_total):
        return  # nothing to write (an empty row still has its reduction: the identity)
    got = launch.configs.get((p_total, r_total))
    if got is None:
        cfg, grid = config(ks, p_total, r_total, prog.target)
        got = launch.configs.put((p_total, r_total), (
            cfg, grid, cfg.looped and not r_contiguous(ks) and "split" in launch.fn and
            p_total > 0))
    cfg, grid, split = got
    use_i64 = p_total * r_total >= 2**31 - 1 or needs_i64(tensors)
    if ks.kind == ROW_COLUMNS:
        _rows_columns(prog, launch, cfg, grid[0], args, r_total, use_i64, device)
    elif split:
        _split(prog, launch, args, p_total, r_total, use_i64, device)
    else:
        _run(prog, launch, "looped" if cfg.looped else "main", grid, cfg, use_i64, device, args)


def _split(prog: Any, launch: Launch, args: tuple, p_total: int, r_total: int, use_i64: bool,
           device: Any) -> None:
    """A long column reduction: partial reductions over row ranges in parallel, then a
    second kernel combines them per column and runs the epilogue."""
    import torch

    plan = launch.splits.get((p_total, r_total))
    if plan is None:
        plan = launch.splits.put((p_total, r_total),
                                 schedule.split(p_total, r_total, prog.target))
    parts = torch.empty((launch.ks.n_parts, plan.splits, p_total),
                        dtype=to_torch(launch.ks.part_dtype), device=device)
    if prog.recorder is not None:
        prog.recorder.alloc(parts)
    args = (*args, parts, plan.splits, plan.chunk)
    _run(prog, launch, "split", (math.ceil(p_total / plan.partial.block_p), plan.splits),
         plan.partial, use_i64, device, args)
    _run(prog, launch, "combine", (math.ceil(p_total / plan.combine.block_p),), plan.combine,
         use_i64, device, args)


def _rows_columns(prog: Any, launch: Launch, cfg: schedule.Config, blocks: int, args: tuple,
                  r_total: int, use_i64: bool, device: Any) -> None:
    """A row kernel with column sums (codegen_columns.py): persistent row programs, each
    leaving a row of partials per sum, then a combine over the columns."""
    import torch

    g = schedule.row_programs(blocks, r_total, launch.ks.n_parts, prog.target, cfg)
    parts = torch.empty((launch.ks.n_parts, g, r_total), dtype=to_torch(launch.ks.part_dtype),
                        device=device)
    if prog.recorder is not None:
        prog.recorder.alloc(parts)
    args = (*args, parts, g)
    if blocks:
        _run(prog, launch, "looped" if cfg.looped else "main", (g,), cfg, use_i64, device, args)
    if r_total:
        comb = schedule.columns_combine(r_total, g, prog.target)
        _run(prog, launch, "combine", (math.ceil(r_total / comb.block_r),), comb, use_i64,
             device, args)


def compile(ctx: AotContext, ks: KernelSource) -> list[KernelArtifact]:
    p_total = math.prod(ctx.size(ks, c) for c in ks.p_classes)
    r_total = math.prod(ctx.size(ks, c) for c in ks.r_classes)
    if ks.kind == POINTWISE:
        cfg = schedule.pointwise(p_total, r_total, ctx.target, elem_bytes(ks))
    else:
        cfg = schedule.reduction(p_total, r_total, ctx.target, elem_bytes(ks),
                                 columns=ks.kind == ROW_COLUMNS)
    name = ks.looped_name if cfg.looped and ks.looped_name else ks.name
    blocks = "ceil(P / BLOCK_P)" if ks.kind != POINTWISE else \
        "ceil(P / BLOCK_P) * ceil(R / BLOCK_R)"
    variants = [(name, cfg, blocks)]
    if ks.kind == ROW_COLUMNS:  # persistent row programs, then the columns' combine
        progs = schedule.row_programs(math.ceil(p_total / cfg.block_p), r_total,
                                      ks.n_parts, ctx.target, cfg)
        variants = [(name, cfg, f"G = {progs} (persistent)"),
                    (ks.combine_name or "", schedule.columns_combine(r_total, progs, ctx.target),
                     "ceil(R / BLOCK_R)")]
    return [ctx.build(ks, vname, constexprs(vcfg, False).values(), options(vcfg),
                      (vcfg.block_p, vcfg.block_r), grid)
            for vname, vcfg, grid in variants]


def segment_member(plan: Any, k: Any, family: str, names: dict[int, str], size_base: int,
                   j: int) -> tuple[list[str], dict[int, str]]:
    """Pointwise kernel k written as member j of a joined launch (kinds/segments.py): its
    body (the lines after its docstring) and its scalars' parameters."""
    w = RowWriter(plan, k, family, names)
    if j:
        w.segment_member(size_base, j)
    tensors = [w.tensor_arg(t, False) for t in k.reads] + [w.tensor_arg(t, True)
                                                          for t in k.writes]
    lines = w.write_single(f"fusile_k{k.index}", tensors)
    start = next(i for i, line in enumerate(lines) if line.startswith('    """')) + 1
    body = "\n".join(lines[start:]).rstrip("\n").split("\n")
    return body, w.scalar_params()


# every kernel the others leave; its writer has no tf32 dots
KIND = Kind("rows", lambda k: True,
            lambda plan, k, family, names, _tf32: RowWriter(plan, k, family, names).source(),
            launch, compile)
