"""Ahead-of-time compilation for a named target, on any machine (no GPU needed).

`compile_for(compiled, target, sizes)` generates the Triton module, and each kernel's kind
(kinds/) picks its schedule from the sizes the signature knows (named sizes it does not know
get a typical default) and compiles its variants (aot_build.py: triton.compile(ASTSource(...),
target=GPUTarget(...))). Each kernel's artifacts come keyed by stage ("triton", "ttir",
"ttgir", "llir", "ptx", "cubin" | "amdgcn", "hsaco") with its resources: registers, spills,
shared memory / LDS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fusile import config
from fusile.backends.targets import Target
from fusile.backends.triton import cache, tune
from fusile.backends.triton.aot_build import AotContext, KernelArtifact
from fusile.backends.triton.kinds import kind_of, runs_flash
from fusile.dsl.types import DType, f64
from fusile.lowering.graph import Op

__all__ = ["Artifacts", "KernelArtifact", "compile_for"]


def _scalar_type(dtype: DType) -> str:
    """Triton's type for a scalar argument of this dtype (float64 stays float64)."""
    return ("fp64" if dtype == f64 else "fp32") if dtype.is_float else "i32"


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


def compile_for(compiled: Any, target: Target, sizes: dict[str, int] | None = None,
                scalar_dtypes: dict[int, str] | None = None, progress: Any = None,
                dot_configs: list[tune.DotConfig] | None = None) -> Artifacts:
    """Compile every kernel of a compiled signature for `target`. A contraction kernel is
    compiled with the rule-based config for the sizes, an attention kernel (forward or
    backward) with its first candidate config that compiles without spills; either with each
    of `dot_configs` instead when given. A head dim the sizes make wider than the target's
    flash kernels hold (Target.max_head_dim) compiles the plain plan, as the runtime runs it."""
    graph = compiled.fused_graph
    known = _class_sizes(compiled, compiled.plan, sizes or {})
    flash = runs_flash(compiled, target, known)
    plan = compiled.plan if flash else compiled.plain_plan  # the same size classes
    source, kernels = compiled.triton("gpu", config.get("tf32"), flash)
    out = Artifacts(target, source)
    scalars = {op.results[0]: _scalar_type(op.dtype) for op in graph.nodes
               if isinstance(op, Op) and op.results}
    scalars.update({v: _scalar_type(t) for v, t in zip(graph.args, graph.arg_info, strict=True)
                    if isinstance(t, DType)})
    scalars.update(scalar_dtypes or {})
    ctx = AotContext(cache.load_module(source), target, graph, plan, known, scalars,
                     dot_configs)
    for i, ks in enumerate(kernels):
        if progress is not None:
            progress(i, len(kernels), ks.name)
        out.kernels.extend(kind_of(ks).compile(ctx, ks))
    return out


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

