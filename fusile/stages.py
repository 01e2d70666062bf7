"""The one table of what a compile can show: each stage's name, what it is, where it comes
from, the file it is written to and which targets have it. `fn.mlir(stage=)`, `fusile compile
--emit`, its help and FUSILE_DEBUG read it.

In pipeline order: the front end's typed AST and MLIR (target-independent), the kernel plan,
the generated Triton, then Triton's own stages for a GPU target (compiled ahead of time).
"""

from __future__ import annotations

from dataclasses import dataclass

# where a stage comes from
FRONT_END = "front end"  # the compiled signature's artifacts (no target)
PLAN = "plan"  # the kernels and their HBM bytes on a target (sizes needed)
AOT = "aot"  # an ahead-of-time compile for a GPU target (Triton's stages)


@dataclass(frozen=True)
class Stage:
    name: str
    what: str
    source: str  # FRONT_END, PLAN or AOT
    suffix: str  # the file name after the function's or kernel's name
    backends: frozenset[str] = frozenset()  # GPU backends that have it (empty: every target)
    binary: bool = False
    debug: bool = False  # FUSILE_DEBUG can dump it as it is made


_CUDA, _HIP = frozenset({"cuda"}), frozenset({"hip"})

STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("ast", "the parsed function", FRONT_END, "ast.txt", debug=True),
    Stage("mlir", "MLIR as emitted: a func of linalg, arith and math on tensors", FRONT_END,
          "mlir.mlir", debug=True),
    Stage("linalg", "MLIR generalized to linalg.generic (what the reference evaluates)",
          FRONT_END, "linalg.mlir", debug=True),
    Stage("fused", "MLIR after elementwise fusion (what kernel backends read)", FRONT_END,
          "fused.mlir", debug=True),
    Stage("plan", "the kernels, the lines each fuses, and their HBM bytes", PLAN, "plan.txt",
          debug=True),
    Stage("triton", "the generated Triton module", AOT, "triton.py", debug=True),
    Stage("ttir", "Triton IR", AOT, "ttir"),
    Stage("ttgir", "Triton GPU IR", AOT, "ttgir"),
    Stage("llir", "LLVM IR", AOT, "ll"),
    Stage("ptx", "PTX", AOT, "ptx", _CUDA),
    Stage("cubin", "the CUDA binary", AOT, "cubin", _CUDA, binary=True),
    Stage("amdgcn", "AMDGCN assembly", AOT, "amdgcn", _HIP),
    Stage("hsaco", "the ROCm code object", AOT, "hsaco", _HIP, binary=True),
]}

FRONT_END_STAGES = [n for n, s in STAGES.items() if s.source == FRONT_END]
MLIR_STAGES = [n for n in FRONT_END_STAGES if STAGES[n].suffix.endswith(".mlir")]
DEBUG_STAGES = [n for n, s in STAGES.items() if s.debug]
