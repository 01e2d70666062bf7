"""Log-sum-exps over rows longer than a block (the looped row kernel) in one pass: the max and
the sum of exp(x - max) together, the sum rescaled as the max grows (codegen_loops.py,
lowering/online.py). Against torch in float64 on rows built to move the max: growing,
shrinking, all -inf, -inf then very negative (the rescale of an empty sum), +inf, NaN."""

from __future__ import annotations

import math

import pytest
import torch

import fusile
from fusile import config
from fusile.stdlib import cross_entropy
from tests.numerics import assert_close

R = 1000  # 16 blocks of 64


def _rows(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, R, generator=g, dtype=torch.float64)
    x[0] = torch.arange(R) * 0.05 + x[0]  # the max grows in every block
    x[1] = -torch.arange(R) * 0.05 + x[1]  # it is in the first block
    x[2] = -math.inf  # no column: softmax NaN, log-sum-exp -inf
    x[3, :300] = -math.inf  # then very negative: exp(0 - r) overflows times an empty sum
    x[3, 300:] = -1e4 + x[3, 300:]
    x[4, -1] = math.inf
    x[5, 500] = math.nan
    x[6] = x[6] * 30.0
    return x.to(dtype)


_BY_HAND = ("log(sum(exp(x - max(x, axis=-1, keepdims=True)), axis=-1)) + max(x, axis=-1)",
            lambda x: torch.log(torch.exp(x - x.amax(-1, keepdim=True)).sum(-1)) + x.amax(-1))
_PROGRAMS = {
    "by_hand": _BY_HAND,  # shifted by the max itself: NaN for rows of -inf or holding +inf
    "softmax": ("softmax(x, axis=-1)", lambda x: torch.softmax(x, -1)),
    "log_softmax": ("log_softmax(x, axis=-1)", lambda x: torch.log_softmax(x, -1)),
    "logsumexp": ("logsumexp(x, axis=-1)", lambda x: torch.logsumexp(x, -1)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64],
                         ids=["f32", "bf16", "f64"])
@pytest.mark.parametrize("name", list(_PROGRAMS))
def test_one_pass_matches_float64_torch(name: str, dtype: torch.dtype) -> None:
    body, ref = _PROGRAMS[name]
    f = fusile.from_source(f"def f(x):\n    return {body}\n")
    x = _rows(dtype)
    with config.override(max_row_block=64, target="cpu"):  # the Triton interpreter
        out = f(x)
        src = f.triton(x, target="cpu")
    looped = src[src.index("_looped("):]
    # the statistics' pass, then the outputs' (a log-sum-exp has no second pass)
    assert looped.count("for r0 in range(0, R, BLOCK_R):") == \
        (1 if name in ("logsumexp", "by_hand") else 2)
    want = ref(x.double())
    if name in ("softmax", "log_softmax"):  # a row holding +inf: torch's is NaN, fusile's
        out, want = out[[0, 1, 2, 3, 5, 6, 7]], want[[0, 1, 2, 3, 5, 6, 7]]  # 0 but there
    special = ~torch.isfinite(want).all(-1)
    torch.testing.assert_close(out[special].double(), want[special].to(dtype).double(),
                               equal_nan=True, rtol=1e-2, atol=0)
    assert_close(out[~special], want[~special], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_cross_entropy_over_long_rows(dtype: torch.dtype) -> None:
    """The stdlib's cross-entropy forward and backward at a vocabulary past the row block."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(6, R, generator=g) * 4.0).to(dtype).requires_grad_()
    t = torch.randint(0, R, (6,), generator=g)
    t[2] = -100
    with config.override(max_row_block=64, target="cpu"):
        loss = cross_entropy(x, t)
        (dx,) = torch.autograd.grad(loss, x)
    x64 = x.detach().double().requires_grad_()
    want = torch.nn.functional.cross_entropy(x64, t)
    assert_close(loss, want, dtype)
    assert_close(dx, torch.autograd.grad(want, x64)[0], dtype)


@pytest.mark.parametrize("target", ["h100", "mi300x"])
def test_ahead_of_time_the_one_pass_builds_without_spills(target: str) -> None:
    from fusile import bf16

    f = fusile.from_source("def f(x):\n    return softmax(x, axis=-1)\n")
    arts = f.compile(target, x=bf16["M", 262144])
    (k,) = arts.kernels
    assert k.name.endswith("_looped") and k.spills == 0 and k.launchable, k.summary()
