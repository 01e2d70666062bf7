"""Flash attention backward (codegen_grad.py): a program per BLOCK_M kept positions, looping
the other axis, scores recomputed from the forward's log-sum-exp."""

from __future__ import annotations

import math
from typing import Any

from fusile.backends.triton import tune
from fusile.backends.triton.aot_build import DEFAULT_HEAD_DIM, AotContext, KernelArtifact
from fusile.backends.triton.codegen_grad import GradWriter
from fusile.backends.triton.host import needs_i64
from fusile.backends.triton.kernel_source import KernelSource
from fusile.backends.triton.kinds.kind import Kind
from fusile.backends.triton.tiled import Launch, launch_tuned


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
        lambda: tune.grad_candidates(prog.target, max(heads)),
        lambda: (f"{launch.key}|{dot.dtype}|{tune.bucket(keep, loop, max(heads), batch)}",
                 f"attention backward {batch} x {keep}x{loop}, d={max(heads)}"),
        lambda c: (batch * math.ceil(keep / c.block_m),),
        lambda c: tune.grad_constexprs(c, heads, loop, use_i64), device, args)


def compile(ctx: AotContext, ks: KernelSource) -> list[KernelArtifact]:
    dot, grad = ks.dot, ks.grad
    assert dot is not None and grad is not None
    heads = [ctx.size(ks, c, DEFAULT_HEAD_DIM) for c in grad.heads]
    symbolic = any(ks.class_global[c] not in ctx.known for c in grad.heads)
    keys = ctx.known.get(ks.class_global[dot.n])  # the looped length

    def consts(cfg: Any) -> dict[str, Any]:
        c = tune.grad_constexprs(cfg, heads, keys, False)
        if symbolic:
            c["EVEN_HEADS"] = False
        return c

    return ctx.first_fitting(ks, tune.grad_candidates(ctx.target, max(heads)), consts,
                             "batch * ceil(kept_len / BLOCK_M)", [])


KIND = Kind("flash_grad", lambda k: k.grad is not None,
            lambda *a: GradWriter(*a).source(), launch, compile)
