"""Scaled dot-product attention written in the DSL, forward and backward: the compiler turns
the forward into one flash kernel (fusile/lowering/attention.py, codegen_attn.py) and the
backward into a row-statistics kernel plus two flash backward kernels, one for dk and dv and
one for dq (fusile/lowering/attention_grad.py, codegen_grad.py).

`attention(q, k, v, causal=, scale=, window=, softcap=, alibi_slopes=)` takes the (batch,
heads, seq, head_dim) layout of torch's scaled_dot_product_attention.

- Grouped-query attention (fewer K/V heads than query heads) views q as (batch, kv_heads,
  group, seq, head_dim) and K/V as (batch, kv_heads, 1, seq, head_dim): the DSL's batch
  broadcasting shares each K/V head with its group and nothing is copied. The backward's dk
  and dv come out per query head and are summed over the group. Decoding (one query per
  head) views q as (batch, kv_heads, 1, group, head_dim) instead: the group's query heads
  are rows of one program, all at the last position, so each K/V head is read once.
- With q_len != kv_len the causal mask is aligned bottom-right (query row i sees keys
  j <= i + kv_len - q_len), as in FlashAttention 2 and torch.nn.attention.bias.
  causal_lower_right. A sliding window of w keeps keys with i + kv_len - q_len - j < w.
- Soft-capping replaces the scores s by cap * tanh(s / cap) before the masks.
- ALiBi adds -slope[h] * |i + kv_len - q_len - j| to the scores (FlashAttention's
  alibi_slopes); the slopes get no gradient.

The forward also returns the log-sum-exp of each score row (float32), which the backward uses
to recompute the probabilities tile by tile. Boolean and integer arguments of the DSL
functions are compile-time constants: a variant without a feature has none of its code.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from fusile import abs, arange, astype, exp, f32, fused, logsumexp, size, softmax, sum, tanh, where
from fusile.dsl.errors import SignatureError
from fusile.stdlib.registry import apply, autograd, call, custom_op, same_device

inf = math.inf


@fused
def attention_fwd(q: Tensor[..., "L", "D"], k: Tensor[..., "K", "D"], v: Tensor[..., "K", "E"],
                  slopes, lens, mask, scale: float, cap: float, causal: bool, window: int,
                  capped: bool, alibi: bool, ragged: bool, fold: bool, masked: bool):
    # query row i sees key j when (causal: j <= i + off) and (window: i + off - j < window);
    # ragged: the first lens[b] keys of sequence b are its cache, and its rows end there;
    # fold: one query per head, the rows are a K/V head's query heads, all at the last position;
    # masked: and where the boolean mask is true. A row left no key (by the mask, the causal
    # mask of more queries than keys, or a short cache) gets zeros, as in sdpa and FlashAttention
    n = lens[:, None, None, None, None] if ragged else size(k, -2)
    i = n - 1 if fold else arange(size(q, -2))[:, None] + (n - size(q, -2))
    j = arange(size(k, -2))[None, :]
    keep = ((j <= i) | (causal == 0)) & ((i - j < window) | (window <= 0)) & \
        ((j < n) | (ragged == 0))
    s = astype(q @ k.T, f32) * scale
    s = where(capped, cap * tanh(s / cap), s)
    slope = slopes[:, None, :, None] if fold else slopes[..., None, None]
    s = where(alibi, s - slope * abs(astype(i - j, s)), s)
    s = where(keep, where(masked, where(mask, s, -inf), s), -inf)
    lse = logsumexp(s, axis=-1)
    o = softmax(s, axis=-1) @ v
    empty = masked | causal | ragged  # rows may see no key: their lse is -inf
    return astype(where(empty, where(lse[..., None] == -inf, 0.0, o), o), q), lse


@fused
def attention_bwd(q: Tensor[..., "L", "D"], k: Tensor[..., "K", "D"], v: Tensor[..., "K", "E"],
                  o: Tensor[..., "L", "E"], do: Tensor[..., "L", "E"], lse: Tensor[..., "L"],
                  slopes, lens, mask, scale: float, cap: float, causal: bool,
                  window: int, capped: bool, alibi: bool, ragged: bool, fold: bool,
                  masked: bool):
    n = lens[:, None, None, None, None] if ragged else size(k, -2)
    i = n - 1 if fold else arange(size(q, -2))[:, None] + (n - size(q, -2))
    j = arange(size(k, -2))[None, :]
    keep = ((j <= i) | (causal == 0)) & ((i - j < window) | (window <= 0)) & \
        ((j < n) | (ragged == 0))
    delta = sum(astype(do, f32) * astype(o, f32), axis=-1)  # rowsum(dP * P) = rowsum(dO * O)
    s = astype(q @ k.T, f32) * scale
    t = tanh(s / cap)
    s = where(capped, cap * t, s)
    slope = slopes[:, None, :, None] if fold else slopes[..., None, None]
    s = where(alibi, s - slope * abs(astype(i - j, s)), s)
    empty = masked | causal | ragged
    m = where(empty, where(lse == -inf, 0.0, lse), lse)  # a row that sees no key: p = 0
    p = exp(where(keep, where(masked, where(mask, s, -inf), s), -inf) - m[..., None])
    ds = p * (do @ v.T - delta[..., None])
    ds = where(capped, ds * (1 - t * t), ds) * scale
    return astype(ds @ k, q), astype(ds.T @ q, k), astype(p.T @ do, v)


@custom_op("attention")
def _attention(q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, lens: Tensor, mask: Tensor,
               scale: float, cap: float, causal: bool, window: int, alibi: bool, ragged: bool,
               fold: bool, masked: bool) -> tuple[Tensor, Tensor]:
    """q: (b, hk, g, lq, d), or (b, hk, 1, g, d) with fold; k, v: (b, hk, 1, lk, d|e);
    slopes: (hk, g); lens: (b,); mask: bool, broadcast to the scores (5-D)."""
    o, lse = attention_fwd(q, k, v, slopes, lens, mask, scale, cap, causal, window, cap > 0,
                           alibi, ragged, fold, masked)
    return o, lse


@_attention.register_fake
def _(q, k, v, slopes, lens, mask, scale, cap, causal, window, alibi, ragged, fold, masked):
    b, hk, g, lq, _ = q.shape
    return (q.new_empty((b, hk, g, lq, v.shape[-1])),
            q.new_empty((b, hk, g, lq), dtype=torch.float32))


@custom_op("attention_backward")
def _attention_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                        slopes: Tensor, lens: Tensor, mask: Tensor, scale: float, cap: float,
                        causal: bool, window: int, alibi: bool, ragged: bool, fold: bool,
                        masked: bool) -> tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv = attention_bwd(q, k, v, o, do, lse, slopes, lens, mask, scale, cap, causal,
                               window, cap > 0, alibi, ragged, fold, masked)
    if dk.shape[2] != 1:  # grouped-query: each K/V head's gradient sums over its group
        dk, dv = dk.sum(2, keepdim=True), dv.sum(2, keepdim=True)
    return dq, dk, dv


@_attention_backward.register_fake
def _(do, q, k, v, o, lse, slopes, lens, mask, scale, cap, causal, window, alibi, ragged, fold,
      masked):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output) -> None:
    q, k, v, slopes, lens, mask, *rest = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], slopes, lens, mask)
    ctx.rest = rest


def _grad(ctx, do, _dlse):
    q, k, v, o, lse, slopes, lens, mask = ctx.saved_tensors
    dq, dk, dv = call(_attention_backward, do.contiguous(), q, k, v, o, lse, slopes, lens, mask,
                      *ctx.rest)
    return dq, dk, dv, *[None] * (len(ctx.rest) + 3)


autograd(_attention, _grad, _setup)


@functools.lru_cache(maxsize=64)
def _no_slopes(h: int, device: torch.device) -> Tensor:
    """The slopes argument when there is no ALiBi (unread by the kernel): made once per head
    count and device, not on every call (an allocation and a fill kernel)."""
    return torch.ones(h, device=device)


@functools.lru_cache(maxsize=16)
def _no_lens(device: torch.device) -> Tensor:
    """The lens argument without cache_seqlens (unread by the kernel), made once per device."""
    return torch.ones(1, dtype=torch.int32, device=device)


@functools.lru_cache(maxsize=16)
def _no_mask(device: torch.device) -> Tensor:
    """The mask argument without a mask (unread by the kernel), made once per device."""
    return torch.ones((1, 1, 1, 1, 1), dtype=torch.bool, device=device)


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
              scale: float | None = None, window: int | None = None,
              softcap: float | None = None, alibi_slopes: Tensor | None = None,
              cache_seqlens: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """softmax(mask(q @ k^T * scale)) @ v as one flash kernel, with a fused flash backward.
    q: (batch, heads, q_len, d); k: (batch, kv_heads, kv_len, d); v: (batch, kv_heads,
    kv_len, e); heads a multiple of kv_heads. scale defaults to 1/sqrt(d). alibi_slopes:
    (heads,) float32, the score bias -slope * |i + kv_len - q_len - j|.

    cache_seqlens: (batch,) int32 or int64, for a KV cache longer than what it holds (a
    static cache): sequence b attends to its first cache_seqlens[b] keys only (which include
    this step's q_len new ones, already written to the cache), and the causal mask, window
    and ALiBi positions align its rows to that end (kv_len above reads cache_seqlens[b]).

    mask: boolean, (batch or 1, heads or 1, q_len or 1, kv_len), True where a query may see a
    key (sdpa's boolean attn_mask, such as a padding mask), on top of the other masks. It is
    read tile by tile in the flash kernels.

    A query row left no key (by the mask, by a causal mask over more queries than keys, or
    by a short cache) gets zeros, as in sdpa and FlashAttention, and no gradient."""
    same_device("attention", q, k, v, alibi_slopes)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise SignatureError("fusile.stdlib.attention: q, k and v must be (batch, heads, seq, "
                             f"head_dim), got {tuple(q.shape)}, {tuple(k.shape)}, "
                             f"{tuple(v.shape)}")
    b, h, lq, d = q.shape
    bk, hk, lk, dk = k.shape
    if (bk, hk, lk) != tuple(v.shape[:3]) or dk != d or bk != b:
        raise SignatureError(f"fusile.stdlib.attention: shapes do not fit: q {tuple(q.shape)}, "
                             f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if hk == 0 or h % hk:
        raise SignatureError(f"fusile.stdlib.attention: {h} query heads is not a multiple of "
                             f"{hk} key/value heads")
    if len({q.dtype, k.dtype, v.dtype}) != 1:
        raise SignatureError(f"fusile.stdlib.attention: q, k and v have different dtypes "
                             f"({q.dtype}, {k.dtype}, {v.dtype}); cast them to one")
    if alibi_slopes is not None and tuple(alibi_slopes.shape) != (h,):
        raise SignatureError(f"fusile.stdlib.attention: alibi_slopes has shape "
                             f"{tuple(alibi_slopes.shape)}, expected ({h},)")
    if softcap is not None and not softcap > 0:  # also false for nan
        raise SignatureError(f"fusile.stdlib.attention: softcap must be positive, got {softcap}")
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or
                               window <= 0):
        raise SignatureError(f"fusile.stdlib.attention: window must be a positive int, got "
                             f"{window!r}")
    ragged = cache_seqlens is not None
    # the unread constants are made once per device in eager; inside torch.compile they are
    # constants of the graph (Dynamo traces through lru_cache, warning that it does)
    compiling = torch.compiler.is_compiling()
    if cache_seqlens is None:
        lens = _no_lens.__wrapped__(q.device) if compiling else _no_lens(q.device)
    elif not isinstance(cache_seqlens, Tensor) or tuple(cache_seqlens.shape) != (b,) or \
            cache_seqlens.dtype not in (torch.int32, torch.int64) or \
            cache_seqlens.device != q.device:
        got = (f"{tuple(cache_seqlens.shape)} {cache_seqlens.dtype} on {cache_seqlens.device}"
               if isinstance(cache_seqlens, Tensor) else type(cache_seqlens).__name__)
        raise SignatureError(f"fusile.stdlib.attention: cache_seqlens must be ({b},) int32 or "
                             f"int64 on {q.device}, got {got}")
    else:
        lens = cache_seqlens
    if mask is not None and (not isinstance(mask, Tensor) or mask.dtype != torch.bool or
                             mask.dim() != 4 or mask.device != q.device or mask.shape[3] != lk
                             or any(m not in (1, n) for m, n in zip(mask.shape[:3], (b, h, lq),
                                                                    strict=True))):
        got = (f"{tuple(mask.shape)} {mask.dtype} on {mask.device}"
               if isinstance(mask, Tensor) else type(mask).__name__)
        raise SignatureError(f"fusile.stdlib.attention: mask must be a boolean ({b} or 1, {h} "
                             f"or 1, {lq} or 1, {lk}) tensor on {q.device} (True: attend), "
                             f"got {got}")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    g = h // hk
    q5 = q.unflatten(1, (hk, g))  # (b, hk, g, lq, d): a view
    # decoding (one query per head): a K/V head's g query heads are the rows of one program,
    # which reads that head's keys and values once, not once per query head
    fold = lq == 1 and g > 1
    if fold:
        q5 = q5.transpose(2, 3)  # (b, hk, 1, g, d): a view
    k5, v5 = k.unsqueeze(2), v.unsqueeze(2)  # (b, hk, 1, lk, d): shared by the group
    alibi = alibi_slopes is not None
    slopes = (alibi_slopes.float() if alibi_slopes is not None else
              _no_slopes.__wrapped__(h, q.device) if compiling else
              _no_slopes(h, q.device)).view(hk, g)
    if mask is None:
        m5 = _no_mask.__wrapped__(q.device) if compiling else _no_mask(q.device)
    elif mask.shape[1] == 1:
        m5 = mask.unsqueeze(2)  # (b|1, 1, 1, lq|1, lk)
    else:  # per head: as q's heads are laid out
        m5 = mask.unflatten(1, (hk, g))
        m5 = m5.transpose(2, 3) if fold else m5
    out, _ = apply(_attention, q5, k5, v5, slopes, lens, m5, scale, float(softcap or 0.0),
                   bool(causal), int(window or 0), alibi, ragged, fold, mask is not None)
    return (out.transpose(2, 3) if fold else out).flatten(1, 2)
