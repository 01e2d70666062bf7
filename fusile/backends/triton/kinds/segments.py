"""Independent pointwise kernels in one launch (horizontal fusion): consecutive pointwise
kernels of a plan that share no tensor they write (rope's q and k, a function's unrelated
outputs) become one kernel whose grid is theirs end to end. A program runs the kernel whose
range of program ids holds its own:

    if tl.program_id(0) < SEG1:
        <the first kernel's body>
        return
    <the second kernel's body, its program ids counted from SEG1>

Each member keeps its own tile (BLOCK_P_j, BLOCK_R_j) and sizes; the launch takes the most
warps any member's tile asks for. Saves a launch per member (on the host, and on the GPU the
gap and tail between kernels), never bytes. The rows writer writes each member under the
joined kernel's names (RowWriter.segment_member: sizes, tile and first program id);
`FUSILE_HORIZONTAL=0` launches them one by one."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fusile.backends.triton import schedule
from fusile.backends.triton.aot_build import AotContext, KernelArtifact
from fusile.backends.triton.codegen import segment_blocks
from fusile.backends.triton.host import needs_i64
from fusile.backends.triton.kernel_source import KernelSource, TensorArg
from fusile.backends.triton.kinds.kind import Kind
from fusile.backends.triton.kinds.rows import blocks, elem_bytes, empty_grid
from fusile.backends.triton.tiled import Launch
from fusile.lowering.partition import POINTWISE

_PID = "    pid = tl.program_id(0)"


def _alone(ks: KernelSource) -> bool:
    """A plain pointwise kernel (no variants to launch, no partials)."""
    return ks.kind == POINTWISE and ks.segments is None and not (
        ks.looped_name or ks.split_name or ks.combine_name) and \
        ks.source.count(_PID + "\n") == 1


def _independent(a: list[KernelSource], b: KernelSource) -> bool:
    """b reads nothing the kernels `a` write and writes nothing they read or write."""
    written = {t.tid for k in a for t in k.tensors if t.is_output}
    touched = {t.tid for k in a for t in k.tensors}
    return not any(t.tid in (touched if t.is_output else written) for t in b.tensors)


# (kernel, first size number, member index) -> its body under the joined kernel's names
# (the lines after its docstring) and its scalars' parameters
Member = Callable[[KernelSource, int, int], tuple[list[str], dict[int, str]]]


def merge(kernels: list[KernelSource], member: Member) -> list[KernelSource]:
    """The kernels with each run of consecutive independent pointwise kernels joined;
    `member` writes a kernel as a member of a joined one."""
    from fusile import config

    if not config.get("horizontal"):
        return kernels
    out: list[KernelSource] = []
    run: list[KernelSource] = []
    for ks in [*kernels, None]:
        if ks is not None and _alone(ks) and (not run or _independent(run, ks)):
            run.append(ks)
            continue
        out.extend([_join(run, member)] if len(run) > 1 else run)
        run = [ks] if ks is not None and _alone(ks) else []
        if ks is not None and not run:
            out.append(ks)
    return out


def _join(members: list[KernelSource], member: Member) -> KernelSource:
    tensors: dict[int, TensorArg] = {}
    for ks in members:
        for ta in ks.tensors:
            got = tensors.get(ta.tid)
            tensors[ta.tid] = ta if got is None else replace(
                got, stride_axes=sorted(set(got.stride_axes) | set(ta.stride_axes)))
    classes: list[int] = []
    class_global: dict[int, tuple] = {}
    bodies: list[list[str]] = []
    annotated: dict[int, str] = {}  # each scalar's parameter, as its first reader wrote it
    for j, ks in enumerate(members):
        body, params_of = member(ks, len(classes), j)
        bodies.append(body)
        for v, param in params_of.items():
            annotated.setdefault(v, param)
        for c in ks.classes:
            class_global[len(classes)] = ks.class_global[c]
            classes.append(len(classes))
    scalars = list(annotated)
    params = [f"{ta.name}_ptr" for ta in tensors.values()]
    params += [f"{ta.name}_s{axis}" for ta in tensors.values() for axis in ta.stride_axes]
    params += [f"n{i}" for i in classes] + [annotated[v] for v in scalars]
    params += [f"SEG{j}" for j in range(1, len(members))]
    params += [f"{block}: tl.constexpr" for j in range(len(members))
               for block in segment_blocks(j)]
    params.append("USE_I64: tl.constexpr")
    first = members[0]
    locs = sorted({loc for ks in members for loc in _locs(ks)})
    doc = (f"pointwise kernels {', '.join(str(ks.index) for ks in members)} (one launch)"
           + (": " + ", ".join(locs) if locs else ""))
    lines = ["@triton.jit", f"def {first.name}({', '.join(params)}):", f'    """{doc}"""']
    for j, (ks, body) in enumerate(zip(members, bodies, strict=True)):
        if j < len(members) - 1:
            bound = f"SEG{j + 1}"
            lines.append(f"    if tl.program_id(0) < {bound}:  # kernel {ks.index}")
            lines += ["    " + line if line else line for line in body]
            lines.append("        return")
        else:
            lines.append(f"    # kernel {ks.index}")
            lines += body
    return KernelSource(first.name, POINTWISE, first.index, "\n".join(lines),
                        list(tensors.values()), classes, [], [], class_global, scalars,
                        segments=members)


def _locs(ks: KernelSource) -> list[str]:
    doc = re.search(r'^    """[^:"]*: (.*)"""$', ks.source, re.M)
    return doc.group(1).split(", ") if doc else []


def _configs(members: list[KernelSource], totals: list[tuple[int, int]], target: Any
             ) -> list[schedule.Config]:
    return [schedule.pointwise(p, r, target, elem_bytes(ks))
            for ks, (p, r) in zip(members, totals, strict=True)]


def _values(cfgs: list[schedule.Config], use_i64: bool) -> tuple[dict, dict]:
    consts: dict[str, Any] = {}
    for j, cfg in enumerate(cfgs):
        block_p, block_r = segment_blocks(j)
        consts[block_p], consts[block_r] = cfg.block_p, cfg.block_r
    consts["USE_I64"] = use_i64
    return consts, {"num_warps": max(c.num_warps for c in cfgs), "num_stages": 1}


def launch(prog: Any, launch: Launch, tensors: list[Any], args: tuple,
           sizes: dict[tuple, int], device: Any) -> None:
    members = launch.ks.segments
    assert members is not None
    totals = [(math.prod(sizes[ks.class_global[c]] for c in ks.p_classes),
               math.prod(sizes[ks.class_global[c]] for c in ks.r_classes)) for ks in members]
    runs = (True,) * len(members)
    if not all(p and r for p, r in totals):  # an empty member may still have a result
        by_tid = {ta.tid: t for ta, t in zip(launch.ks.tensors, tensors, strict=True)}
        runs = tuple(not empty_grid(ks, [by_tid[ta.tid] for ta in ks.tensors], p, r)
                     for ks, (p, r) in zip(members, totals, strict=True))
        if not any(runs):
            return
    key = (tuple(totals), runs)
    got = launch.configs.get(key)
    if got is None:
        cfgs = _configs(members, totals, prog.target)
        counts = [blocks(p, cfg.block_p) * blocks(r, cfg.block_r) if run else 0
                  for cfg, (p, r), run in zip(cfgs, totals, runs, strict=True)]
        use_i64 = any(p * r >= 2**31 - 1 for p, r in totals)
        got = launch.configs.put(key, (cfgs, counts, use_i64))
    cfgs, counts, use_i64 = got
    consts, opts = _values(cfgs, use_i64 or needs_i64(tensors))
    bounds = tuple(sum(counts[:j]) for j in range(1, len(counts)))
    prog.run_variant(launch, "main", (sum(counts),), consts, opts, device, (*args, *bounds))


def compile(ctx: AotContext, ks: KernelSource) -> list[KernelArtifact]:
    members = ks.segments
    assert members is not None
    totals = [(math.prod(ctx.size(m, c) for c in m.p_classes),
               math.prod(ctx.size(m, c) for c in m.r_classes)) for m in members]
    cfgs = _configs(members, totals, ctx.target)
    consts, opts = _values(cfgs, False)
    grid = " + ".join(f"ceil(P{m.index} / {bp}) * ceil(R{m.index} / {br})"
                      for j, m in enumerate(members) for bp, br in [segment_blocks(j)])
    return [ctx.build(ks, ks.name, consts, opts, (cfgs[0].block_p, cfgs[0].block_r), grid)]


def _write(*_args: Any) -> KernelSource:
    raise AssertionError("a plan kernel is never a segments kernel: merge() joins sources")


KIND = Kind("segments", lambda k: getattr(k, "segments", None) is not None, _write, launch,
            compile)
