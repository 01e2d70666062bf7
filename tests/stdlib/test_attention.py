"""Attention from the DSL: one flash kernel, against a float64 reference (interpreter on CPU,
CUDA with -m gpu), its plan, the key-loop bounds from masks, and cross-compiles."""

from __future__ import annotations

import math

import pytest
import torch

import fusile
from fusile.backends import targets
from fusile.backends.triton.aot import compile_for
from fusile.stdlib.attention import attention, attention_bwd, attention_fwd
from tests.numerics import assert_close


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              window: int | None = None, softcap: float | None = None,
              scale: float | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1).double(), v.repeat_interleave(g, 1).double()
    lq, lk = q.shape[2], k.shape[2]
    s = (q.double() @ k.transpose(-1, -2)) * (scale or 1 / math.sqrt(q.shape[-1]))
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias.double()
    i = torch.arange(lq, device=q.device)[:, None] + lk - lq
    j = torch.arange(lk, device=q.device)[None, :]
    keep = torch.ones(lq, lk, dtype=torch.bool, device=q.device)
    if causal:
        keep &= j <= i
    if window:
        keep &= i - j < window
    return torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ v


CASES = {  # name -> (q heads, kv heads, q_len, kv_len, d, e, options)
    "plain": (2, 2, 37, 37, 16, 16, {}),
    "causal": (2, 2, 37, 37, 16, 16, {"causal": True}),
    "causal_ragged": (2, 2, 20, 45, 16, 24, {"causal": True}),
    "window": (2, 2, 37, 37, 16, 16, {"window": 5}),
    "causal_window": (2, 2, 45, 45, 16, 16, {"causal": True, "window": 7}),
    "softcap": (2, 2, 37, 37, 16, 16, {"softcap": 3.0}),
    "gqa": (4, 2, 33, 33, 16, 16, {"causal": True}),
    "head_dim_32_odd": (2, 1, 50, 70, 32, 32, {}),
}


def _check(name: str, dtype: torch.dtype, device: str, scale_up: int = 1) -> None:
    h, hk, lq, lk, d, e, opts = CASES[name]
    lq, lk = lq * scale_up, lk * scale_up
    torch.manual_seed(len(name) + lq)
    q = torch.randn(2, h, lq, d, dtype=dtype, device=device)
    k = torch.randn(2, hk, lk, d, dtype=dtype, device=device)
    v = torch.randn(2, hk, lk, e, dtype=dtype, device=device)
    out = attention(q, k, v, **opts)
    assert out.shape == (2, h, lq, e) and out.dtype == dtype
    assert_close(out, reference(q, k, v, **opts), dtype, scale=4 if dtype == torch.float32 else 1)


@pytest.mark.parametrize("name", CASES)
def test_interpreter_matches_reference(name: str) -> None:
    _check(name, torch.float32, "cpu")


def test_bf16_on_the_interpreter() -> None:
    _check("causal_ragged", torch.bfloat16, "cpu")


ALIBI = """
def alibi(q, k, v, slopes, scale: float):
    i = arange(size(q, -2))[:, None]
    j = arange(size(k, -2))[None, :]
    s = (q @ k.T) * scale + slopes[:, None, None] * astype(j - i, q)
    return softmax(where(j <= i, s, -inf), axis=-1) @ v
"""

BIAS = """
def biased(q, k, v, bias, scale: float):
    return softmax((q @ k.T) * scale + bias, axis=-1) @ v
"""


def test_alibi_and_bias_tensors_from_the_dsl() -> None:
    q, k, v = (torch.randn(2, 3, 29, 16) for _ in range(3))
    slopes = torch.rand(3)
    fn = fusile.from_source(ALIBI)
    i, j = torch.arange(29)[:, None], torch.arange(29)[None, :]
    bias = slopes[:, None, None].double() * (j - i)
    assert_close(fn(q, k, v, slopes, 0.25), reference(q, k, v, True, scale=0.25, bias=bias),
                 torch.float32, scale=4)
    assert "(attention" in str(fn.plan(q, k, v, slopes, 0.25))
    fb = fusile.from_source(BIAS)
    b = torch.randn(2, 3, 29, 29)
    assert_close(fb(q, k, v, b, 0.25), reference(q, k, v, scale=0.25, bias=b), torch.float32,
                 scale=4)


def test_plan_is_one_kernel_with_no_score_matrix_in_hbm() -> None:
    q, k, v = (torch.randn(2, 4, 64, 32, dtype=torch.bfloat16) for _ in range(3))
    ex = attention_core.explain(q, k, v, 0.125, True, 0)
    (kern,) = ex.kernels
    assert kern.kind == "attention"
    assert kern.read_bytes == 3 * q.numel() * 2 and kern.write_bytes == q.numel() * 2


def test_masks_bound_the_key_loop() -> None:
    q = torch.randn(1, 1, 40, 16)
    causal = attention_core.triton(q, q, q, 0.25, True, 0, target="cpu")
    assert "hi = tl.minimum(hi," in causal and "lo = tl.maximum" not in causal
    window = attention_core.triton(q, q, q, 0.25, False, 8, target="cpu")
    assert "lo = tl.maximum(lo," in window and "hi = tl.minimum" not in window
    plain = attention_core.triton(q, q, q, 0.25, False, 0, target="cpu")
    assert "tl.minimum(hi" not in plain and "tl.maximum(lo" not in plain


def test_argument_errors() -> None:
    q = torch.randn(1, 3, 8, 16)
    with pytest.raises(fusile.FusileError, match="multiple"):
        attention(q, torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16))
    with pytest.raises(fusile.FusileError, match="batch, heads, seq"):
        attention(q[0], q[0], q[0])
    with pytest.raises(NotImplementedError, match="backward"):
        attention(q.requires_grad_(), q, q)


@pytest.mark.parametrize("target", ["h100", "mi300x"])
@pytest.mark.parametrize("d", [64, 128])
def test_cross_compiles_without_spills(target: str, d: int) -> None:
    q = torch.randn(1, 2, 1, 8, d, dtype=torch.bfloat16)
    for causal in (False, True):
        compiled = attention_core.compiled(q, q, q, 0.1, causal, 0)
        sizes = {"q.4": d, "k.4": d, "v.4": d}
        for k in compile_for(compiled, targets.get(target), sizes=sizes).kernels:
            assert k.spills == 0, k.summary()


# ----------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", CASES)
def test_cuda_matches_reference(name: str, dtype: torch.dtype) -> None:
    _check(name, dtype, "cuda")
    _check(name, dtype, "cuda", scale_up=9)
