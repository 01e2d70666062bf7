"""stdlib.attention with a boolean mask (sdpa's attn_mask: padding masks, per-head masks), on
top of causal, GQA and decoding: output and dq, dk, dv against a float64 reference; a row the
mask leaves no key gets zeros and no NaN reaches the gradients, as with sdpa."""

from __future__ import annotations

import math

import pytest
import torch

from fusile.dsl.errors import SignatureError
from fusile.stdlib.attention import attention, attention_fwd
from tests.stdlib.test_attention import check_against

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def masked_reference(q, k, v, mask, causal=False):
    """Attention in float64 with the mask (and causal, bottom-right) as sdpa applies them;
    a row left no key is zeros, its gradients too (no NaN from a softmax of no scores)."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    keep = mask & _causal(q.shape[2], k.shape[2], causal, q.device)
    seen = keep.any(-1, keepdim=True)
    p = torch.softmax(torch.where(seen, s.masked_fill(~keep, float("-inf")), 0.0), -1)
    return (p * seen) @ v


def padding(b: int, lq: int, lk: int, device: str, left: bool) -> torch.Tensor:
    """(b, 1, lq, lk): sequence i has (lk - 3 * i) real keys, padded on the right (training)
    or on the left (batched generation)."""
    n = torch.tensor([lk - 3 * i for i in range(b)], device=device)
    j = torch.arange(lk, device=device)
    keep = j[None] >= (lk - n)[:, None] if left else j[None] < n[:, None]
    return keep[:, None, None, :].expand(b, 1, lq, lk)


CASES = {  # name -> (q heads, kv heads, q_len, kv_len, causal, mask kind, rows with no key)
    "right_padding_causal": (4, 2, 29, 29, True, "right", False),
    "left_padding_causal": (4, 4, 23, 23, True, "left", True),  # the padded rows: zeros
    "random_per_head": (4, 2, 17, 40, False, "heads", True),
    "random_rows_q1": (2, 2, 1, 37, False, "random", True),
    "decode_gqa_padding": (8, 2, 1, 45, True, "left", False),  # the folded query heads
    "decode_per_head": (4, 2, 1, 30, False, "heads", True),
}


def _mask(kind: str, b: int, h: int, lq: int, lk: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(lq * 31 + lk)
    if kind in ("right", "left"):
        return padding(b, lq, lk, device, kind == "left")
    heads = h if kind == "heads" else 1
    m = torch.rand(b, heads, lq, lk, generator=g) > 0.35
    m[0, 0, 0] = False  # one row with no key
    return m.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASES)
def test_masked_attention_matches_reference(name: str, device: str) -> None:
    h, hk, lq, lk, causal, kind, has_empty = CASES[name]
    dtypes = [torch.float32] if device == "cpu" else [torch.bfloat16, torch.float16]
    for dtype in dtypes:
        torch.manual_seed(h * lq + lk)
        q = torch.randn(3, h, lq, 16, dtype=dtype, device=device, requires_grad=True)
        k = torch.randn(3, hk, lk, 16, dtype=dtype, device=device, requires_grad=True)
        v = torch.randn(3, hk, lk, 16, dtype=dtype, device=device, requires_grad=True)
        mask = _mask(kind, 3, h, lq, lk, device)
        out = check_against(lambda q, k, v, m=mask, **o: masked_reference(q, k, v, m, **o),
                            q, k, v, {"causal": causal}, True, mask=mask)
        assert torch.isfinite(out).all()
        empty = ~(mask.expand(3, h, lq, lk) & _causal(lq, lk, causal, device)).any(-1)
        assert bool(empty.any()) == has_empty
        assert (out[empty] == 0).all()


def _causal(lq: int, lk: int, causal: bool, device: str) -> torch.Tensor:
    i = torch.arange(lq, device=device)[:, None] + lk - lq
    return torch.arange(lk, device=device)[None] <= i if causal else \
        torch.ones(lq, lk, dtype=torch.bool, device=device)


def test_the_mask_is_read_in_the_flash_kernel() -> None:
    """One flash kernel reads q, k, v and the mask; no (q_len x kv_len) float tensor."""
    q = torch.randn(2, 2, 1, 40, 16)
    ones, lens = torch.ones(2, 1), torch.ones(1, dtype=torch.int32)
    mask = torch.rand(2, 1, 1, 40, 50) > 0.5
    k = torch.randn(2, 2, 1, 50, 16)
    (kern,) = attention_fwd.explain(q, k, k, ones, lens, mask, 0.25, 0.0, True, 0, False,
                                    False, False, False, True).kernels
    assert kern.kind == "attention"


@pytest.mark.parametrize("mask,message", [
    (torch.ones(2, 1, 5, 6), "boolean"),
    (torch.ones(2, 1, 5, 7, dtype=torch.bool), r"\(2 or 1, 4 or 1, 5 or 1, 6\)"),
    (torch.ones(2, 3, 5, 6, dtype=torch.bool), "got \\(2, 3, 5, 6\\)"),
    (torch.ones(1, 5, 6, dtype=torch.bool), "boolean"),
])
def test_mask_errors(mask: torch.Tensor, message: str) -> None:
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 6, 8)
    with pytest.raises(SignatureError, match=message):
        attention(q, k, k, mask=mask)
