"""MLIR pass pipeline: the emitted module -> generic linalg ("linalg") -> fused ("fused").

Each pass runs on its own and the module is verified after it; a failing pass saves its input
and prints a repro command line.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass

from torch_mlir import ir, passmanager

from fusile import config
from fusile.dsl.errors import InternalError

# One line per step; the comment says why it is there.
GENERALIZE = [
    "canonicalize",  # fold constants and trivial ops the emitter left
    "cse",  # share identical subexpressions (e.g. x - mean computed twice)
    "linalg-generalize-named-ops",  # linalg.fill / linalg.matmul -> linalg.generic
]
FUSE = [
    "linalg-fuse-elementwise-ops",  # producer generics fuse into consumers (one region each)
    "canonicalize",  # drop dead operands and results fusion left behind
    "cse",
]


@dataclass(frozen=True)
class Stages:
    """The named MLIR artifacts of one compile."""

    mlir: str  # as emitted
    linalg: ir.Module  # generalized, unfused: what the reference backend evaluates
    fused: ir.Module  # after elementwise fusion: what kernel backends read


def _run(module: ir.Module, passes: list[str], stage: str) -> None:
    for p in passes:
        text_before = str(module)
        pm = passmanager.PassManager.parse(f"builtin.module(func.func({p}))",
                                           context=module.context)
        try:
            pm.run(module.operation)
            ok = module.operation.verify() if config.get("verify") else True
        except Exception as exc:  # MLIRError: the pass itself failed
            raise repro(text_before, p, stage, str(exc)) from None
        if not ok:
            raise repro(text_before, p, stage, "the module does not verify")


def repro(text: str, p: str, stage: str, why: str) -> InternalError:
    """The error for a pass that failed (or a module it left wrong): its input is saved to a
    file, and the message gives the command that reproduces the failure on it."""
    path = save_module(text)
    return InternalError(f"MLIR pass {p!r} failed in stage {stage!r}: {why}",
                         repro=f"input saved to {path}\n  repro: torch-mlir-opt "
                               f"--pass-pipeline='builtin.module(func.func({p}))' {path}")


def save_module(text: str) -> str:
    """Save a module's text for an error's repro; returns the file's path."""
    with tempfile.NamedTemporaryFile("w", suffix=".mlir", prefix="fusile-", delete=False) as f:
        f.write(text)
    return f.name


def run_pipeline(module: ir.Module) -> Stages:
    """Verify the emitted module, then generalize and fuse, verifying after every pass."""
    if not module.operation.verify():
        raise repro(str(module), "(emission)", "mlir", "the emitted module does not verify")
    emitted = module.operation.get_asm(enable_debug_info=True)
    _dump("mlir", emitted)
    _run(module, GENERALIZE, "linalg")
    linalg_text = module.operation.get_asm(enable_debug_info=True)
    _dump("linalg", linalg_text)
    linalg = ir.Module.parse(linalg_text, context=module.context)
    _run(module, FUSE, "fused")
    _dump("fused", module.operation.get_asm(enable_debug_info=True))
    return Stages(emitted, linalg, module)


def _dump(stage: str, text: str) -> None:
    if config.debug_enabled(stage) or (stage != "mlir" and config.debug_enabled("mlir")):
        print(f"// ----- FUSILE_DEBUG {stage}\n{text}", file=sys.stderr)
