"""Rotary position embedding, as its textbook formula in the DSL: one pointwise kernel that
reads x once and writes one tensor, forward and backward (the transposed rotation, one
kernel too).

Both conventions: rotate-half (LLaMA, Hugging Face's apply_rotary_pos_emb: the two halves of
the rotated features pair up) and interleaved (GPT-J, GPT-NeoX's original: features 2i and
2i+1 pair up), and partial rotary (`rotary_dim < head_dim`: only the first rotary_dim
features rotate, the rest pass through, as GPT-NeoX, Phi and GLM do).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fusile.dsl.errors import SignatureError
from fusile.dsl.fused import fused
from fusile.stdlib.registry import apply, autograd, call, custom_op, same_device


@fused
def turn(x1, x2, c1, c2, s1, s2, backward: bool):
    """The rotation of feature pairs (x1, x2) by angles with cosines (c1, c2) and sines
    (s1, s2): (x1 c1 - x2 s1, x2 c2 + x1 s2); its transpose (the backward) is
    (x1 c1 + x2 s2, x2 c2 - x1 s1)."""
    lo = x1 * c1 + x2 * s2 if backward else x1 * c1 - x2 * s1
    hi = x2 * c2 - x1 * s1 if backward else x2 * c2 + x1 * s2
    return lo.to(x1.dtype), hi.to(x1.dtype)


@fused
def rope_halves(x, cos, sin, rotary: int, partial: bool, backward: bool):
    """x * cos + rotate_half(x) * sin over the first `rotary` features of x (cos, sin:
    rotary wide); the features past them pass through."""
    h = rotary // 2
    lo, hi = turn(x[..., :h], x[..., h:rotary], cos[..., :h], cos[..., h:], sin[..., :h],
                  sin[..., h:], backward)
    return torch.cat([lo, hi, x[..., rotary:]], -1) if partial else torch.cat([lo, hi], -1)


@fused
def rope_halves_qk(q, k, cos, sin, rotary: int, partial: bool, backward: bool):
    """rope_halves of q and of k in one call (the same tables)."""
    h = rotary // 2
    c1, c2, s1, s2 = cos[..., :h], cos[..., h:], sin[..., :h], sin[..., h:]
    a, b = turn(q[..., :h], q[..., h:rotary], c1, c2, s1, s2, backward)
    c, d = turn(k[..., :h], k[..., h:rotary], c1, c2, s1, s2, backward)
    yq = torch.cat([a, b, q[..., rotary:]], -1) if partial else torch.cat([a, b], -1)
    yk = torch.cat([c, d, k[..., rotary:]], -1) if partial else torch.cat([c, d], -1)
    return yq, yk


@fused
def rope_pairs(x, cos, sin, rotary: int, partial: bool, backward: bool):
    """The interleaved convention on x viewed as (..., head_dim / 2, 2) and cos, sin as
    (..., rotary / 2, 2): pair (x0, x1) turns by the angle of (c0, s0) and (c1, s1)."""
    h = rotary // 2
    y0, y1 = turn(x[..., :h, 0], x[..., :h, 1], cos[..., 0], cos[..., 1], sin[..., 0],
                  sin[..., 1], backward)
    y = torch.stack([y0, y1], -1)
    return torch.cat([y, x[..., h:, :]], -2) if partial else y


@fused
def rope_pairs_qk(q, k, cos, sin, rotary: int, partial: bool, backward: bool):
    """rope_pairs of q and of k in one call (the same tables)."""
    h = rotary // 2
    c0, c1, s0, s1 = cos[..., 0], cos[..., 1], sin[..., 0], sin[..., 1]
    a, b = turn(q[..., :h, 0], q[..., :h, 1], c0, c1, s0, s1, backward)
    c, d = turn(k[..., :h, 0], k[..., :h, 1], c0, c1, s0, s1, backward)
    yq, yk = torch.stack([a, b], -1), torch.stack([c, d], -1)
    yq = torch.cat([yq, q[..., h:, :]], -2) if partial else yq
    yk = torch.cat([yk, k[..., h:, :]], -2) if partial else yk
    return yq, yk


def _run(x: Tensor, k: Tensor | None, cos: Tensor, sin: Tensor, interleaved: bool,
         backward: bool) -> Any:
    """The kernels for (..., seq, head_dim) x (and k) and (..., seq, rotary) tables (views,
    no copies): results shaped as the inputs, contiguous."""
    rotary, d = cos.shape[-1], x.shape[-1]
    if not interleaved:
        if k is None:
            return rope_halves(x, cos, sin, rotary, rotary < d, backward)
        return rope_halves_qk(x, k, cos, sin, rotary, rotary < d, backward)
    pairs, table = (d // 2, 2), (rotary // 2, 2)
    c, s = cos.unflatten(-1, table), sin.unflatten(-1, table)
    if k is None:
        return rope_pairs(x.unflatten(-1, pairs), c, s, rotary, rotary < d, backward).flatten(-2)
    a, b = rope_pairs_qk(x.unflatten(-1, pairs), k.unflatten(-1, pairs), c, s, rotary,
                         rotary < d, backward)
    return a.flatten(-2), b.flatten(-2)


@custom_op("rope")
def _rope(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    return _run(x, None, cos, sin, interleaved, False)


@_rope.register_fake
def _(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    return x.new_empty(x.shape)


@custom_op("rope_backward")
def _rope_bwd(dy: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    return _run(dy, None, cos, sin, interleaved, True)


@_rope_bwd.register_fake
def _(dy: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    return dy.new_empty(dy.shape)


def _rope_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[-3], inputs[-2])
    ctx.interleaved = inputs[-1]


def _rope_grad(ctx, dy):
    cos, sin = ctx.saved_tensors
    return call(_rope_bwd, dy, cos, sin, ctx.interleaved), None, None, None


autograd(_rope, _rope_grad, _rope_setup)


@custom_op("rope_qk")
def _rope_qk(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool
             ) -> tuple[Tensor, Tensor]:
    return _run(q, k, cos, sin, interleaved, False)


@_rope_qk.register_fake
def _(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool
      ) -> tuple[Tensor, Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape)


@custom_op("rope_qk_backward")
def _rope_qk_bwd(dq: Tensor, dk: Tensor, cos: Tensor, sin: Tensor, interleaved: bool
                 ) -> tuple[Tensor, Tensor]:
    return _run(dq, dk, cos, sin, interleaved, True)


@_rope_qk_bwd.register_fake
def _(dq: Tensor, dk: Tensor, cos: Tensor, sin: Tensor, interleaved: bool
      ) -> tuple[Tensor, Tensor]:
    return dq.new_empty(dq.shape), dk.new_empty(dk.shape)


def _rope_qk_grad(ctx, dq, dk):
    cos, sin = ctx.saved_tensors
    if dk is None:  # k's result was not used: its gradient is zero
        dk = cos.new_zeros(ctx.k_shape, dtype=dq.dtype)
    gq, gk = call(_rope_qk_bwd, dq, dk, cos, sin, ctx.interleaved)
    return gq, gk, None, None, None


def _rope_qk_setup(ctx, inputs, output):
    _rope_setup(ctx, inputs, output)
    ctx.k_shape = inputs[1].shape


autograd(_rope_qk, _rope_qk_grad, _rope_qk_setup)


def _tables(x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """cos and sin checked against x and viewed to broadcast against it."""
    if x.dim() < 2 or x.shape[-1] % 2:
        raise SignatureError(f"fusile.stdlib.rope: expected x of (..., seq, head_dim) with "
                             f"an even head_dim, got {tuple(x.shape)}")
    seq, d = x.shape[-2], x.shape[-1]
    if cos.shape != sin.shape or cos.dim() not in (2, 3) or cos.shape[-2] != seq or \
            cos.shape[-1] % 2 or not 0 < cos.shape[-1] <= d:
        raise SignatureError(f"fusile.stdlib.rope: cos and sin must be (seq, rotary_dim) or "
                             f"(batch, seq, rotary_dim) with seq {seq} and an even rotary_dim "
                             f"<= head_dim {d}, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if cos.requires_grad or sin.requires_grad:
        raise SignatureError("fusile.stdlib.rope: cos and sin are constants here; detach them")
    if cos.dim() == 2:
        return cos, sin
    if x.dim() < 3 or cos.shape[0] not in (1, x.shape[0]):
        raise SignatureError(f"fusile.stdlib.rope: cos of (batch, seq, rotary_dim) needs x "
                             f"of (batch, ..., seq, head_dim), got {tuple(x.shape)}")
    heads = (slice(None), *(None,) * (x.dim() - 3))  # broadcast over the heads: a view
    return cos[heads], sin[heads]


def rope(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    """Rotary position embedding: x * cos + rotate(x) * sin.

    x is (..., seq, head_dim), e.g. (batch, heads, seq, head_dim), any strides. cos and sin
    are (seq, rotary_dim) or (batch, seq, rotary_dim), as Hugging Face models build them
    (batch is broadcast over the heads), with rotary_dim <= head_dim: features past
    rotary_dim pass through unchanged. `interleaved=False` is the rotate-half convention
    (LLaMA, Mistral, Qwen, Gemma: feature i pairs with i + rotary_dim / 2),
    `interleaved=True` the GPT-J one (feature 2i pairs with 2i + 1). cos and sin are
    constants: no gradient flows to them. The result is a new contiguous tensor."""
    same_device("rope", x, cos, sin)
    cos, sin = _tables(x, cos, sin)
    return apply(_rope, x, cos, sin, bool(interleaved))


def apply_rotary_pos_emb(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor,
                         position_ids: Tensor | None = None, unsqueeze_dim: int = 1,
                         interleaved: bool = False) -> tuple[Tensor, Tensor]:
    """Hugging Face's apply_rotary_pos_emb as a drop-in, q and k in one call: q and k are
    (batch, heads, seq, head_dim) (k may have fewer heads), cos and sin (batch, seq,
    rotary_dim) or (seq, rotary_dim); `interleaved` as for rope."""
    if unsqueeze_dim != 1 or position_ids is not None:
        raise SignatureError("fusile.stdlib.apply_rotary_pos_emb: takes q, k of (batch, heads, "
                             "seq, head_dim) (unsqueeze_dim=1) and no position_ids, as current "
                             "Hugging Face models call it")
    same_device("apply_rotary_pos_emb", q, k, cos, sin)
    if k.dim() != q.dim() or k.shape[-2:] != q.shape[-2:] or k.shape[:-3] != q.shape[:-3] or \
            k.dtype != q.dtype:
        raise SignatureError(f"fusile.stdlib.apply_rotary_pos_emb: q and k must share dtype, "
                             f"batch, seq and head_dim, got {q.dtype}{tuple(q.shape)} and "
                             f"{k.dtype}{tuple(k.shape)}")
    cos, sin = _tables(q, cos, sin)
    return apply(_rope_qk, q, k, cos, sin, bool(interleaved))
