"""Numerics helpers: relative norm error against a float64 reference, dtype-derived bounds."""

from __future__ import annotations

import numpy as np
import torch

# Relative-norm tolerance per result dtype (DESIGN.md, Numerics). float64 results are
# still computed by a different evaluation order than the reference, hence not 0.
REL_TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def rel_err(out: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray) -> float:
    o = torch.as_tensor(np.asarray(out) if isinstance(out, np.ndarray) else out).detach()
    r = torch.as_tensor(np.asarray(ref) if isinstance(ref, np.ndarray) else ref).detach()
    o, r = o.double().cpu(), r.double().cpu()
    assert o.shape == r.shape, f"shape {tuple(o.shape)} != reference {tuple(r.shape)}"
    if not torch.equal(torch.isnan(o), torch.isnan(r)):  # NaN exactly where the reference has it
        return float("inf")
    finite = torch.isfinite(r)
    infinite = torch.isinf(r)  # and the same infinities
    if not torch.equal(torch.isfinite(o), finite) or not torch.equal(o[infinite], r[infinite]):
        return float("inf")
    diff = (o[finite] - r[finite]).norm()
    denom = r[finite].norm()
    return float(diff / denom) if denom > 0 else float(diff)


def assert_close(out: torch.Tensor, ref: torch.Tensor | np.ndarray,
                 dtype: torch.dtype | None = None, scale: float = 1.0) -> None:
    dtype = dtype or (out.dtype if isinstance(out, torch.Tensor) else torch.float64)
    err = rel_err(out, ref)
    tol = REL_TOL[dtype] * scale
    assert err <= tol, f"relative error {err:.3g} exceeds {tol:.3g} for {dtype}"


def check_torch_twin(fn, shapes: list[tuple[int, ...]], seed: str, dtype: torch.dtype,
                     device: str, calls: int = 1) -> None:
    """A @fused function whose body is torch code too, against that body run by torch in
    float64 (`fn.__wrapped__`) on fresh random inputs of these shapes; `calls` rounds (on a
    GPU the later ones replay the first one's launches). Results are contiguous, of dtype."""
    g = torch.Generator().manual_seed(sum(map(ord, seed)))
    for _ in range(calls):
        args = [torch.randn(s, generator=g).to(dtype).to(device) for s in shapes]
        outs = fn(*args)
        refs = fn.__wrapped__(*[a.double() for a in args])
        outs = outs if isinstance(outs, tuple) else (outs,)
        refs = refs if isinstance(refs, tuple) else (refs,)
        assert len(outs) == len(refs)
        for out, ref in zip(outs, refs, strict=True):
            assert out.dtype == dtype and out.shape == ref.shape and out.is_contiguous()
            assert_close(out, ref, dtype)
