"""log1p and expm1 keep a tiny x's digits on every CPU path (the Triton interpreter, mlir-cpu,
the float64 reference) and give torch's values at -1, +-inf and NaN; against torch in float64."""

from __future__ import annotations

import pytest
import torch

import fusile
from fusile import config

_X = [1e-30, -1e-30, 1e-9, -1e-9, 1e-5, -3e-4, 3e-3, -0.3, 0.7, 5.0, 30.0, -20.0, 0.0, -1.0,
      float("inf"), float("-inf"), float("nan")]


@pytest.mark.parametrize("target", ["cpu", "mlir-cpu", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["log1p", "expm1"])
def test_exact_near_zero_and_torchs_special_values(name: str, dtype: torch.dtype,
                                                   target: str) -> None:
    f = fusile.from_source(f"def f(x):\n    return {name}(x)\n")
    x = torch.tensor(_X, dtype=dtype)
    with config.override(target=target):
        got = f(x).double()
    want = getattr(torch, name)(x.double())
    same = torch.isnan(want) == torch.isnan(got)
    assert same.all(), (x[~same], got[~same], want[~same])
    finite = torch.isfinite(want)
    assert torch.equal(got[~finite & ~torch.isnan(want)], want[~finite & ~torch.isnan(want)])
    rel = ((got - want) / want.abs().clamp_min(1e-300))[finite & (want != 0)].abs()
    ulps = 4 * torch.finfo(dtype).eps
    assert rel.max() <= ulps, (x[finite & (want != 0)][rel.argmax()], rel.max())
