"""torch's argmax / argmin and the indices of torch.max(x, dim) in fused bodies
(dsl/indices.py): the first extreme's index as torch gives it (the first NaN where a row holds
one, the first of equal maxima), int64, on every CPU path and on the GPU."""

from __future__ import annotations

import math
import re

import pytest
import torch

import fusile
from fusile import config, fused
from fusile.dsl import errors as E


@fused
def unpacked(x):
    v, i = torch.max(x, -1, keepdim=True)
    lo, at = x.min(dim=0, keepdim=True)
    return v * 2.0 + lo, i + at


@fused
def picks(x, y):
    return (x.argmax(dim=-1), torch.argmin(x, 1, keepdim=True), torch.max(x, dim=0).indices,
            torch.min(y, -1)[1], y[0].argmax(),
            x.argmin(-1, keepdim=True) + x.argmax(0, keepdim=True))


def _inputs(dtype: torch.dtype, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 37, generator=g)
    x[1, 3] = math.nan  # the first NaN is the max and the min
    x[1, 20] = math.nan
    x[2, 9] = x[2, 5] = x[2].max() + 1.0  # a tie: the first
    x[3, 0] = math.inf
    x[4, :] = -math.inf  # every element the max: index 0
    y = torch.randn(4, 3000, generator=g)
    return x.to(dtype).to(device), y.to(dtype).to(device)


@pytest.mark.parametrize("block", [0, 256], ids=["one-block", "looped"])
@pytest.mark.parametrize("target", ["cpu", "mlir-cpu", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_indices_are_torchs(dtype: torch.dtype, target: str, block: int) -> None:
    x, y = _inputs(dtype)
    with config.override(target=target, max_row_block=block):
        got = picks(x, y)
    for g, w in zip(got, picks.__wrapped__(x, y), strict=True):
        assert g.dtype == torch.int64 and torch.equal(g, w), (g, w)


def test_values_and_indices_unpacked() -> None:
    x, _ = _inputs(torch.float32)
    x = x[:, 21:]  # no NaN: the values compare with torch.equal
    v, i = unpacked(x)
    want_v, want_i = unpacked.__wrapped__(x)
    assert torch.equal(v, want_v) and torch.equal(i, want_i) and i.dtype == torch.int64


def test_the_rest_of_the_body_keeps_its_gradient() -> None:
    @fused
    def f(x):
        return torch.softmax(x, -1) * 2.0, x.argmax(-1)

    x = torch.randn(5, 9, requires_grad=True)
    y, i = f(x)
    assert torch.equal(i, x.argmax(-1)) and not i.requires_grad
    (g,) = torch.autograd.grad(y.sum() + (y * y).sum(), x)
    x64 = x.detach().double().requires_grad_()
    y64 = torch.softmax(x64, -1) * 2.0
    (want,) = torch.autograd.grad(y64.sum() + (y64 * y64).sum(), x64)
    torch.testing.assert_close(g.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("line,cls,text", [
    ("a = torch.argmax(x)", E.UnsupportedSyntaxError, "argmax() over every element flattens"),
    ("a = x.argmin(dim=0, out=x)", E.BuiltinCallError, "argmin() takes (input, dim=None"),
    ("a = torch.max(x, 1)", E.UnsupportedSyntaxError, "torch.max(x, dim).values or .indices"),
])
def test_what_is_not_spelled_says_why(line: str, cls: type, text: str) -> None:
    f = fusile.from_source(f"def f(x):\n    {line}\n    return a\n", globals_={"torch": torch},
                           filename="prog.py")
    with pytest.raises(cls, match=re.escape(text)) as info:
        f(torch.randn(3, 4))
    assert "prog.py:2:" in str(info.value)  # the user's line, with a caret


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_indices_on_the_gpu(dtype: torch.dtype) -> None:
    x, y = _inputs(dtype, "cuda")
    for _ in range(2):  # the second call replays the first one's launches
        for g, w in zip(picks(x, y), picks.__wrapped__(x, y), strict=True):
            assert g.dtype == torch.int64 and torch.equal(g, w), (g, w)
