"""Ahead-of-time compilation for a named target, on any machine (no GPU needed).

`compile_for(compiled, target, sizes)` generates the Triton module, picks each kernel's
schedule from the sizes it knows (named sizes it does not know get a typical default), and
runs triton.compile(ASTSource(...), target=GPUTarget(...)). Each kernel's artifacts come keyed
by stage ("triton", "ttir", "ttgir", "llir", "ptx", "cubin" | "amdgcn", "hsaco") with its
resources: registers, spills, shared memory / LDS.
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusile import config
from fusile.backends.targets import Target
from fusile.backends.triton import cache, schedule, tune
from fusile.backends.triton.kernel_source import KernelSource
from fusile.backends.triton.launch import FP_FUSION
from fusile.dsl.errors import BackendError
from fusile.lowering.graph import Op
from fusile.lowering.partition import POINTWISE, ROW_COLUMNS

DEFAULT_SIZE = 4096  # for a size the signature leaves symbolic
DEFAULT_HEAD_DIM = 128  # for an attention head dim the signature leaves symbolic

_SIG = {"bf16": "*bf16", "f16": "*fp16", "f32": "*fp32", "f64": "*fp64", "i32": "*i32",
        "i64": "*i64", "bool": "*i1"}


@dataclass
class KernelArtifact:
    name: str
    kind: str
    asm: dict[str, Any]
    registers: int | None
    spills: int | None
    shared_bytes: int
    num_warps: int
    block: tuple[int, int]
    grid: str
    constexprs: dict[str, Any] = field(default_factory=dict)  # what the binary was built with

    def summary(self) -> str:
        return (f"{self.name}: {self.kind}, {self.num_warps} warps, block {self.block}, "
                f"{self.registers} registers, {self.spills} spilled bytes, "
                f"{self.shared_bytes} B shared, grid {self.grid}")


@dataclass
class Artifacts:
    target: Target
    triton: str
    kernels: list[KernelArtifact] = field(default_factory=list)

    def __getitem__(self, kind: str) -> Any:
        if kind in ("triton", "source"):
            return self.triton
        found = [k.asm[kind] for k in self.kernels if kind in k.asm]
        if not found:
            raise KeyError(f"no {kind!r} artifact for {self.target.name}; have "
                           f"{sorted(set().union(*[k.asm for k in self.kernels]))}")
        return found if len(found) > 1 else found[0]

    def __str__(self) -> str:
        return "\n".join([f"fusile artifacts for {self.target.describe().strip()}"] +
                         ["  " + k.summary() for k in self.kernels])


def _ptxas_resources(ptx: str, arch: int) -> tuple[int | None, int | None]:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas(arch).path
    except Exception:  # an older Triton without the helper: resources unknown
        return None, None
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        m = re.search(r"\.target\s+(sm_\w+)", ptx)  # e.g. sm_90a: Hopper-only instructions
        sm = m.group(1) if m else f"sm_{arch}"
        res = subprocess.run([ptxas, "-v", f"-arch={sm}", str(src), "-o",
                              str(Path(d) / "k.cubin")], capture_output=True, text=True)
    text = res.stdout + res.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.findall(r"(\d+) bytes spill (?:stores|loads)", text)
    return (int(regs.group(1)) if regs else None,
            sum(int(s) for s in spill) if spill else 0)


def _amdgcn_resources(amdgcn: str) -> tuple[int | None, int | None, int]:
    def field_(name: str) -> int:
        m = re.search(rf"\.{name}:\s+(\d+)", amdgcn)
        return int(m.group(1)) if m else 0

    # spills to memory: VGPR spills always go to scratch; SGPR spills go to VGPR lanes
    # (v_writelane, no memory traffic) unless the kernel has scratch
    sgpr = field_("sgpr_spill_count") if field_("private_segment_fixed_size") else 0
    return (field_("vgpr_count"), field_("vgpr_spill_count") + sgpr,
            field_("group_segment_fixed_size"))


def _signature(ks: KernelSource, fn_params: list[str], constexprs: dict[str, Any],
               scalar_dtypes: dict[int, str]) -> dict[str, str]:
    """Triton's type for each kernel parameter: pointers from the tensors' dtypes, the
    constexprs, the scalars' own types (float32 by default), and i32 strides and sizes."""
    scalars = {f"a{v}": scalar_dtypes.get(v, "fp32") for v in ks.scalars}
    sig: dict[str, str] = {}
    for p in fn_params:
        if p in constexprs:
            sig[p] = "constexpr"
        elif p == "part_ptr":  # partials: flash-decoding's, a split or rows+columns kernel's
            sig[p] = _SIG[ks.part_dtype.name]
        elif p.endswith("_ptr"):
            ta = next(t for t in ks.tensors if f"{t.name}_ptr" == p)
            sig[p] = _SIG[ta.dtype.name]
        elif p in scalars:
            sig[p] = scalars[p]
        else:  # strides and sizes
            sig[p] = "i32"
    return sig


def compile_for(compiled: Any, target: Target, sizes: dict[str, int] | None = None,
                scalar_dtypes: dict[int, str] | None = None, progress: Any = None,
                dot_configs: list[tune.DotConfig] | None = None) -> Artifacts:
    """Compile every kernel of a compiled signature for `target`. A contraction kernel is
    compiled with the rule-based config for the sizes, an attention kernel (forward or
    backward) with its first candidate config that compiles without spills; either with each
    of `dot_configs` instead when given."""

    graph = compiled.fused_graph
    plan = compiled.plan
    source, kernels = compiled.triton("gpu", config.get("tf32"))
    module = cache.load_module(source)
    out = Artifacts(target, source)
    known = _class_sizes(compiled, plan, sizes or {})
    scalars = {op.results[0]: "fp32" if op.dtype.is_float else "i32" for op in graph.nodes
               if isinstance(op, Op) and op.results}
    scalars.update(scalar_dtypes or {})
    for i, ks in enumerate(kernels):
        if progress is not None:
            progress(i, len(kernels), ks.name)
        p_total = math.prod(known.get(ks.class_global[c], DEFAULT_SIZE) for c in ks.p_classes)
        r_total = math.prod(known.get(ks.class_global[c], DEFAULT_SIZE) for c in ks.r_classes)
        spec = _specialization(ks, graph, plan, known)
        if ks.grad is not None or ks.attn is not None:
            # a head dim the signature leaves symbolic is 128 (not 4096) and keeps its masks,
            # so the kernel serves any head dim up to its block; a known one drops them when
            # it is its block
            head_classes = ks.grad[0] if ks.grad is not None else (ks.dot.k, ks.attn[0])
            heads = [known.get(ks.class_global[c], DEFAULT_HEAD_DIM) for c in head_classes]
            symbolic = any(ks.class_global[c] not in known for c in head_classes)
            keys = known.get(ks.class_global[ks.dot.n])  # the looped length
            if ks.grad is not None:
                cands = tune.grad_candidates(target, max(heads))
                grid = "batch * ceil(kept_len / BLOCK_M)"
            else:
                cands = tune.attention_candidates(target, max(heads))
                grid = "batch * ceil(q_len / BLOCK_M)"
            for fcfg in dot_configs or cands:  # without dot_configs: the first that fits
                consts = tune.grad_constexprs(fcfg, heads, keys, False) if ks.grad is not None \
                    else tune.attention_constexprs(fcfg, heads[0], heads[1], keys, False)
                if ks.attn is not None and ks.attn[1] is not None:
                    consts["POS_SCALE"] = True  # a positive score scale (the usual one)
                if symbolic:
                    consts["EVEN_HEADS"] = False
                art = _compile(module, ks, ks.name, target, {**consts, **spec[0]}, spec[1],
                               fcfg.options(target.backend), scalars,
                               (fcfg.block_m, fcfg.block_n), grid)
                if dot_configs or not art.spills or fcfg == cands[-1]:
                    out.kernels.append(art)
                    if ks.attn is not None and ks.split_name and ks.combine_name:
                        for name, g in ((ks.split_name, "programs x splits"),
                                        (ks.combine_name, "programs")):  # flash-decoding
                            out.kernels.append(_compile(
                                module, ks, name, target, {**consts, **spec[0]}, spec[1],
                                fcfg.options(target.backend), scalars,
                                (fcfg.block_m, fcfg.block_n), g))
                    if not dot_configs:
                        break
            continue
        if ks.dot is not None:
            m, n, k = (known.get(ks.class_global[c], DEFAULT_SIZE)
                       for c in (ks.dot.m, ks.dot.n, ks.dot.k))
            batch = math.prod(known.get(ks.class_global[c], DEFAULT_SIZE) for c in ks.dot.batch)
            for dcfg in dot_configs or tune.candidates(target, ks.dot.dtype, m, n, k, batch,
                                                         ks.dot.prologue)[:1]:
                out.kernels.append(_compile(module, ks, ks.name, target,
                                            {**dcfg.constexprs(k, False), **spec[0]}, spec[1],
                                            dcfg.options(target.backend), scalars,
                                            (dcfg.block_m, dcfg.block_n),
                                            "batch * ceil(M / BLOCK_M) * ceil(N / BLOCK_N)"))
            continue
        elem = max((t.dtype.bits // 8 for t in ks.tensors if t.dtype.bits >= 8), default=4)
        if ks.kind == POINTWISE:
            cfg = schedule.pointwise(p_total, r_total, target, elem)
        else:
            cfg = schedule.reduction(p_total, r_total, target, elem,
                                     columns=ks.kind == ROW_COLUMNS)
        name = ks.looped_name if cfg.looped and ks.looped_name else ks.name
        blocks = "ceil(P / BLOCK_P)" if ks.kind != POINTWISE else \
            "ceil(P / BLOCK_P) * ceil(R / BLOCK_R)"
        variants = [(name, cfg, blocks)]
        if ks.kind == ROW_COLUMNS:  # persistent row programs, then the columns' combine
            progs = schedule.row_programs(math.ceil(p_total / cfg.block_p), r_total,
                                          ks.n_parts, target, cfg)
            variants = [(name, cfg, f"G = {progs} (persistent)"),
                        (ks.combine_name or "", schedule.columns_combine(r_total, progs, target),
                         "ceil(R / BLOCK_R)")]
        for vname, vcfg, grid in variants:
            out.kernels.append(_compile(
                module, ks, vname, target, {"BLOCK_P": vcfg.block_p, "BLOCK_R": vcfg.block_r,
                                            "USE_I64": False, **spec[0]}, spec[1],
                {"num_warps": vcfg.num_warps, "num_stages": vcfg.num_stages}, scalars,
                (vcfg.block_p, vcfg.block_r), grid))
    return out


def _specialization(ks: KernelSource, graph: Any, plan: Any, known: dict[tuple, int]
                    ) -> tuple[dict[str, int], dict[str, bool]]:
    """What Triton's JIT specializes on for contiguous tensors of these sizes: strides of 1
    become constants, and 16-byte aligned pointers and ints divisible by 16 are marked so (the
    loads vectorise and pipeline as they would at run time)."""
    values: dict[str, int] = {}
    for ta in ks.tensors:
        shape = [s if s is not None else known.get(plan.tensor_class(ta.tid, a), DEFAULT_SIZE)
                 for a, s in enumerate(graph.tensors[ta.tid].shape)]
        stride = 1
        strides = []
        for s in reversed(shape):
            strides.append(stride)
            stride *= s
        strides.reverse()
        for axis in ta.stride_axes:
            values[f"{ta.name}_s{axis}"] = strides[axis]
    for i, c in enumerate(ks.classes):
        values[f"n{i}"] = known.get(ks.class_global[c], DEFAULT_SIZE)
    ones = {p: 1 for p, v in values.items() if v == 1}
    aligned = {p: True for p, v in values.items() if v % 16 == 0}
    aligned.update({f"{ta.name}_ptr": True for ta in ks.tensors})
    return ones, aligned


def _compile(module: Any, ks: KernelSource, name: str, target: Target,
             constexprs: dict[str, Any], aligned: dict[str, bool], options: dict[str, Any],
             scalar_dtypes: dict[int, str] | None, block: tuple[int, int], grid: str
             ) -> KernelArtifact:
    import triton
    from triton.compiler import ASTSource

    jit = getattr(module, name)
    sig = _signature(ks, list(jit.arg_names), constexprs, scalar_dtypes or {})
    attrs = {(jit.arg_names.index(p),): [["tt.divisibility", 16]] for p in aligned
             if p in jit.arg_names and p not in constexprs}
    try:
        src = ASTSource(jit, sig, constexprs=constexprs, attrs=attrs)
        k = triton.compile(src, target=target.gpu_target(), options={**options, **FP_FUSION})
    except Exception as exc:
        raise BackendError(f"Triton could not compile {name} for {target.name}: {exc}") \
            from exc
    asm = {"triton": ks.source, **dict(k.asm)}
    asm.pop("source", None)
    if target.backend == "cuda":
        regs, spills = _ptxas_resources(asm["ptx"], int(target.arch))
        shared = int(getattr(k.metadata, "shared", 0))
    else:
        regs, spills, lds = _amdgcn_resources(asm["amdgcn"])
        shared = max(lds, int(getattr(k.metadata, "shared", 0)))  # LDS is allocated dynamically
    return KernelArtifact(name, ks.kind, asm, regs, spills, shared, options["num_warps"],
                          block, grid, dict(constexprs))


def _class_sizes(compiled: Any, plan: Any, named: dict[str, int]) -> dict[tuple, int]:
    """Sizes of the kernels' dim classes that the signature fixes (ints, or named sizes)."""
    graph = compiled.fused_graph
    known: dict[tuple, int] = {}
    for t, info in graph.tensors.items():
        for axis, s in enumerate(info.shape):
            if s is not None:
                known.setdefault(plan.tensor_class(t, axis), s)
    env = compiled.typed.env
    for a, t in zip(graph.args, compiled.arg_types, strict=True):
        for axis, d in enumerate(getattr(t, "shape", ())):
            d = env.find(d)
            name = getattr(d, "name", None)
            if name in named:
                known.setdefault(plan.tensor_class(a, axis), named[name])
    return known

