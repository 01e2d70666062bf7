"""Ahead-of-time compile of one kernel variant (aot.py orchestrates, each kind in kinds/ says
which variants and configs): Triton's signature and specialization for the sizes the
signature knows, triton.compile for the target, and the registers, spills and shared memory
of the result."""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusile.backends.targets import Target
from fusile.backends.triton.kernel_source import KernelSource
from fusile.backends.triton.launch import FP_FUSION
from fusile.dsl.errors import BackendError

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
    smem_limit: int = 0  # the target's shared memory (LDS) per block, bytes (0: unknown)

    @property
    def launchable(self) -> bool:
        """Whether its shared memory fits the target's (a launch past it fails)."""
        return not self.smem_limit or self.shared_bytes <= self.smem_limit

    def summary(self) -> str:
        over = "" if self.launchable else \
            f" (over the target's {self.smem_limit} B: it cannot launch)"
        return (f"{self.name}: {self.kind}, {self.num_warps} warps, block {self.block}, "
                f"{self.registers} registers, {self.spills} spilled bytes, "
                f"{self.shared_bytes} B shared{over}, grid {self.grid}")


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
                          block, grid, dict(constexprs), target.smem_kib * 1024)


@dataclass
class AotContext:
    """What every kernel of one ahead-of-time compile shares: the loaded module, the target,
    the sizes the signature fixes (by global class) and the scalars' Triton types;
    `dot_configs`: compile tiled kernels with each of these instead of the rule's pick."""

    module: Any
    target: Target
    graph: Any
    plan: Any
    known: dict[tuple, int]
    scalars: dict[int, str]
    dot_configs: list[Any] | None = None

    def size(self, ks: KernelSource, c: int, default: int = DEFAULT_SIZE) -> int:
        """The size of a kernel's index class: known, else `default`."""
        return self.known.get(ks.class_global[c], default)

    def build(self, ks: KernelSource, name: str, constexprs: dict[str, Any],
              options: dict[str, Any], block: tuple[int, int], grid: str) -> KernelArtifact:
        """Compile the variant `name` of kernel `ks` with these constexprs and options."""
        ones, aligned = _specialization(ks, self.graph, self.plan, self.known)
        return _compile(self.module, ks, name, self.target, {**constexprs, **ones}, aligned,
                        options, self.scalars, block, grid)

    def first_fitting(self, ks: KernelSource, cands: list[Any],
                      consts: Any, grid: str, extra: list[tuple[str, str]]) -> list[KernelArtifact]:
        """A tiled kernel with the first candidate config that compiles without spills within
        the target's shared memory (the last one if none does), or with each of
        `dot_configs`; `extra`: more variants (name, grid) built with the same config."""
        out = []
        for cfg in self.dot_configs or cands:
            c = consts(cfg)
            opts = cfg.options(self.target.backend)
            art = self.build(ks, ks.name, c, opts, (cfg.block_m, cfg.block_n), grid)
            if self.dot_configs or (not art.spills and art.launchable) or cfg == cands[-1]:
                out.append(art)
                out.extend(self.build(ks, name, c, opts, (cfg.block_m, cfg.block_n), g)
                           for name, g in extra)
                if not self.dot_configs:
                    break
        return out
