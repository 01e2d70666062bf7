"""Scaled dot-product attention written in the DSL: the compiler turns it into one flash
kernel (fusile/lowering/attention.py, fusile/backends/triton/codegen_attn.py).

`attention(q, k, v, causal=, scale=, window=, softcap=)` takes the (batch, heads, seq,
head_dim) layout of torch's scaled_dot_product_attention. Grouped-query attention (fewer K/V
heads than query heads) views q as (batch, kv_heads, group, seq, head_dim) and K/V as
(batch, kv_heads, 1, seq, head_dim): the DSL's batch broadcasting shares each K/V head with
its group, and nothing is copied. With q_len != kv_len the causal mask is aligned bottom-right
(query row i sees keys j <= i + kv_len - q_len), as in FlashAttention 2 and
torch.nn.attention.bias.causal_lower_right. A sliding window of w keeps keys with
i + kv_len - q_len - j < w. Soft-capping replaces the scores s by cap * tanh(s / cap) before
the masks.

Forward only for now: the fused backward (dq, dk, dv from the saved log-sum-exp) is not
written yet, and calling backward through this op raises a clear error.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fusile import arange, fused, size, softmax, tanh, where
from fusile.dsl.errors import SignatureError
from fusile.stdlib.registry import same_device

inf = math.inf


@fused
def attention_core(q, k, v, scale: float, causal: bool, window: int):
    # query row i sees key j when (causal: j <= i + off) and (window: i + off - j < window)
    off = size(k, -2) - size(q, -2)
    i = arange(size(q, -2))[:, None] + off
    j = arange(size(k, -2))[None, :]
    keep = ((j <= i) | (causal == 0)) & ((i - j < window) | (window <= 0))
    s = where(keep, (q @ k.T) * scale, -inf)
    return softmax(s, axis=-1) @ v


@fused
def attention_softcap(q, k, v, scale: float, cap: float, causal: bool, window: int):
    off = size(k, -2) - size(q, -2)
    i = arange(size(q, -2))[:, None] + off
    j = arange(size(k, -2))[None, :]
    keep = ((j <= i) | (causal == 0)) & ((i - j < window) | (window <= 0))
    s = where(keep, cap * tanh((q @ k.T) * (scale / cap)), -inf)
    return softmax(s, axis=-1) @ v


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
              scale: float | None = None, window: int | None = None,
              softcap: float | None = None) -> Tensor:
    """softmax(mask(q @ k^T * scale)) @ v, one flash kernel. q: (batch, heads, q_len, d);
    k: (batch, kv_heads, kv_len, d); v: (batch, kv_heads, kv_len, e); heads a multiple of
    kv_heads. scale defaults to 1/sqrt(d)."""
    same_device("attention", q, k, v)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise SignatureError("fusile.stdlib.attention: q, k and v must be (batch, heads, seq, "
                             f"head_dim), got {tuple(q.shape)}, {tuple(k.shape)}, "
                             f"{tuple(v.shape)}")
    b, h, _lq, d = q.shape
    bk, hk, lk, dk = k.shape
    if (bk, hk, lk) != tuple(v.shape[:3]) or dk != d or bk != b:
        raise SignatureError(f"fusile.stdlib.attention: shapes do not fit: q {tuple(q.shape)}, "
                             f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if hk == 0 or h % hk:
        raise SignatureError(f"fusile.stdlib.attention: {h} query heads is not a multiple of "
                             f"{hk} key/value heads")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise NotImplementedError("fusile.stdlib.attention: backward is not implemented yet; "
                                  "call it under torch.no_grad() or on tensors without grad")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    g = h // hk
    q5 = q.unflatten(1, (hk, g))  # (b, hk, g, lq, d): a view
    k5, v5 = k.unsqueeze(2), v.unsqueeze(2)  # (b, hk, 1, lk, d): shared by the group
    w = int(window) if window else 0
    if softcap:
        out = attention_softcap(q5, k5, v5, scale, float(softcap), bool(causal), w)
    else:
        out = attention_core(q5, k5, v5, scale, bool(causal), w)
    return out.flatten(1, 2)
