"""The one place tolerances for cross-backend agreement are defined.

A backend's output differs from the float64 reference by (a) rounding the result to its dtype
and (b) float32 arithmetic along the way. (a) is relative: half an ulp of the output dtype per
element. (b) is absolute in the size of the values involved: float32's epsilon times the
program's magnitude bound, growing with log2 of the longest reduction (pairwise or tree sums
grow their error with the log of the length). Cancellation (a - b with a ~ b) is why (b) must
be absolute.
"""

from __future__ import annotations

import math

import torch

ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7,
       torch.float64: 2.0**-52}
F32_EPS = 2.0**-23


def allowed(out: torch.Tensor, ref: torch.Tensor, bound: float, reduced: int) -> float:
    """The largest ||out - ref|| (2-norm over all elements) the program may show."""
    n = max(1, out.numel())
    rel = ULP[out.dtype] * 2  # rounding the output, with slack for double rounding
    arith = 64 * F32_EPS * (1 + math.log2(max(1, reduced))) * max(bound, 1.0) * math.sqrt(n)
    return rel * float(ref.norm()) + arith


def check(out: torch.Tensor, ref: torch.Tensor, bound: float, reduced: int) -> None:
    o = out.detach().double().cpu()
    assert o.shape == ref.shape, f"shape {tuple(o.shape)} != reference {tuple(ref.shape)}"
    assert not torch.isnan(o).any(), "NaN in the output (the reference is finite)"
    assert torch.isfinite(o).all(), "inf in the output (the reference is finite)"
    err = float((o - ref).norm())
    limit = allowed(out, ref, bound, reduced)
    assert err <= limit, (f"||out - ref|| = {err:.3g} > {limit:.3g} "
                          f"(||ref|| = {float(ref.norm()):.3g}, dtype {out.dtype})")
