"""Derived backwards agree with torch autograd of the same program run as torch code in
float64 (tests/property/torch_eval.py), on random programs, float32 inputs on the
interpreter (and, -m gpu, CUDA). Profiles as in test_cross_backend.py."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings

import fusile
from fusile.dsl.errors import DerivativeError
from tests.property.programs import Program, programs
from tests.property.torch_eval import function

DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"
# GRAD_PROGRAMS sets the count (a deep run sized to the time a GPU is lent for)
N_GRAD = int(os.environ.get("GRAD_PROGRAMS") or (2000 if DEEP else 40))
TALLY = os.environ.get("PROPERTY_TALLY")  # a file: one line per program checked
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.data_too_large])
REL = 1e-3  # float32 arithmetic through a backward that may divide by small values


def _run(p: Program, device: str) -> None:
    args = [a.float() for a in p.inputs(device)]
    ref_in = [a.detach().cpu().double().requires_grad_() for a in args]
    refs = function(p.source)(*ref_in)
    refs = list(refs) if isinstance(refs, tuple) else [refs]
    keep = [i for i, r in enumerate(refs) if r.dtype.is_floating_point and r.requires_grad]
    assume(keep)
    g = torch.Generator().manual_seed(len(p.source))
    gouts = [torch.randn(refs[i].shape, generator=g, dtype=torch.float64) for i in keep]
    want = torch.autograd.grad([refs[i] for i in keep], ref_in, gouts, allow_unused=True)
    assume(all(w is None or torch.isfinite(w).all() for w in want))
    fn = fusile.from_source(p.source, filename="prog.py")
    xs = [a.clone().requires_grad_() for a in args]
    try:
        outs = fn(*xs)
    except DerivativeError as err:  # the rules not written yet (a concat) say so
        assume("not implemented yet" not in str(err))
        raise
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    got = torch.autograd.grad([outs[i] for i in keep], xs,
                              [go.float().to(device) for go in gouts], allow_unused=True)
    for x, gx, w in zip(xs, got, want, strict=True):
        if w is None:
            assert gx is None or not gx.any(), "a gradient where torch has none"
            continue
        assert gx is not None and gx.shape == x.shape and gx.dtype == x.dtype
        err = float((gx.detach().double().cpu() - w).norm())
        limit = REL * float(w.norm()) + 1e-6 * w.numel() ** 0.5
        assert err <= limit, f"||grad - ref|| = {err:.3g} > {limit:.3g}"
    if TALLY:
        with open(TALLY, "a") as f:
            f.write(f"{device} grad ok\n")


@settings(max_examples=N_GRAD, **SETTINGS)
@given(programs(max_ops=5))
def test_derived_gradients_agree_with_torch(p: Program) -> None:
    _run(p, "cpu")


@settings(max_examples=N_GRAD // 2, **SETTINGS)
@given(programs(max_ops=4, slices=True))
def test_derived_gradients_of_sliced_programs_agree_with_torch(p: Program) -> None:
    _run(p, "cpu")


@pytest.mark.gpu
@settings(max_examples=N_GRAD, derandomize=not DEEP, **SETTINGS)
@given(p=programs(max_ops=5))
def test_derived_gradients_agree_with_torch_on_cuda(p: Program) -> None:
    _run(p, "cuda")
