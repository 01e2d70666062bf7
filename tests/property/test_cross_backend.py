"""Every backend computes the same numbers as torch in float64 (the program's source run as
torch code, tests/property/torch_eval.py) and as the float64 reference over the MLIR, on
random programs: the Triton interpreter and MLIR's CPU JIT (mlir-cpu) on the CPU, Triton on
the GPU.

Profiles (tests/conftest.py): `ci` draws PROGRAMS_CI programs per property, derandomized;
`deep` (HYPOTHESIS_PROFILE=deep) draws thousands, for the GPU and long runs.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings

import fusile
from fusile import config
from tests.backends.test_mlir_cpu import one_row_blocks
from tests.bounds import checked
from tests.property.programs import Program, programs
from tests.property.tolerance import check
from tests.property.torch_eval import evaluate

DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"
# 200 programs whose results are not constant (those are rejected, and the survivors are the
# larger programs: 300 of them took 3.5 minutes of CI's budget, against 1 for 300 unfiltered)
PROGRAMS_CI = 200
N = 2000 if DEEP else PROGRAMS_CI
N_AOT = 2000 if DEEP else 40
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.data_too_large])


TALLY = os.environ.get("PROPERTY_TALLY")  # a file: one line per program checked


def _run(p: Program, device: str) -> None:
    args = p.inputs(device)
    torch_refs = evaluate(p.source, args)  # torch itself: shares no code with the lowering
    # a result that is the same number everywhere (a softmax over a size-1 axis, the variance
    # of one element) would accept a constant answer: such a program tests nothing (decided
    # before compiling it, so a rejected draw costs little)
    assume(not any(_constant(t) for t in torch_refs))
    fn = fusile.from_source(p.source, filename="prog.py")
    with config.override(max_row_block=p.max_row_block), \
            checked() if device == "cpu" else contextlib.nullcontext():  # stray addresses
        out = fn(*args)
    ref = fn.reference(*args)
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    assert len(outs) == len(refs) == len(torch_refs)
    for o, r, t in zip(outs, refs, torch_refs, strict=True):
        r = torch.from_numpy(r)
        assert torch.isfinite(t).all(), "the generator promised a finite reference"
        check(o, t, p.bound, p.reduced)
        check(o, r, p.bound, p.reduced)  # the float64 reference over the MLIR agrees too
    if device == "cpu":  # the third implementation: MLIR's own JIT (backends/mlir_cpu.py),
        # called whole and, where the program is row-separable, in blocks of one row on two
        # threads (as a large call runs)
        for blocks in (False, True):
            with config.override(target="mlir-cpu", cpu_threads=2), one_row_blocks(blocks):
                jit = fn(*args)
            for o, t in zip(jit if isinstance(jit, tuple) else (jit,), torch_refs,
                            strict=True):
                check(o, t, p.bound, p.reduced)
    if TALLY:
        with open(TALLY, "a") as f:
            f.write(f"{device} ok\n")


def _constant(t: torch.Tensor) -> bool:
    """Every element the same (one element counts when it is 0)."""
    flat = t.flatten()
    return bool(flat.numel() == 0 or (flat == (flat[0] if flat.numel() > 1 else 0)).all())


@settings(max_examples=N, **SETTINGS)
@given(programs())
def test_interpreter_agrees_with_reference(p: Program) -> None:
    _run(p, "cpu")


N_SLICED = 2000 if DEEP else 100


@settings(max_examples=N_SLICED, **SETTINGS)
@given(programs(slices=True))
def test_sliced_programs_agree_with_reference(p: Program) -> None:
    """Slices and integer indices (static, negative, stepped and size-based bounds) of
    parameters and of elementwise values, on the interpreter."""
    _run(p, "cpu")


@pytest.mark.gpu
@settings(max_examples=N_SLICED, derandomize=not DEEP, **SETTINGS)
@given(p=programs(slices=True))
def test_sliced_programs_agree_with_reference_on_cuda(p: Program) -> None:
    _run(p, "cuda")


SHARDS = 8 if DEEP else 1  # run with pytest -n 8: each shard draws its own programs


@pytest.mark.gpu
@pytest.mark.parametrize("shard", range(SHARDS))
@settings(max_examples=-(-N // SHARDS), derandomize=not DEEP, **SETTINGS)
@given(p=programs())
def test_cuda_agrees_with_reference(shard: int, p: Program) -> None:
    _run(p, "cuda")


def _cross_compile(p: Program) -> None:
    fn = fusile.from_source(p.source, filename="prog.py")
    sig = {f"x{i}": fusile.dsl.types.DTYPES[{"float32": "f32", "float16": "f16",
                                             "bfloat16": "bf16"}[str(d).split(".")[1]]][s]
           for i, (s, d) in enumerate(zip(p.shapes, p.dtypes, strict=True))}
    for target in ("h100", "mi300x"):
        art = fn.compile(target, **sig)
        for k in art.kernels:
            assert k.spills == 0, f"{target}: {k.summary()}"


@settings(max_examples=N_AOT, **SETTINGS)
@given(programs(max_ops=4))
def test_programs_cross_compile_without_spills(p: Program) -> None:
    _cross_compile(p)


@settings(max_examples=N_AOT // 2, **SETTINGS)
@given(programs(max_ops=4, slices=True))
def test_sliced_programs_cross_compile_without_spills(p: Program) -> None:
    _cross_compile(p)


@settings(max_examples=N, **SETTINGS)
@given(programs())
def test_fused_plan_never_moves_more_bytes(p: Program) -> None:
    fn = fusile.from_source(p.source, filename="prog.py")
    report = fn.plan(*p.inputs())
    assert report.bytes <= report.unfused_bytes, str(report)
