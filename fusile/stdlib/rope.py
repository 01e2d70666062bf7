"""Rotary position embedding, as its textbook formula in the DSL: one pointwise kernel that
reads x once and writes one tensor, forward and backward (the transposed rotation, one
kernel too).

Both conventions: rotate-half (LLaMA, Hugging Face's apply_rotary_pos_emb: the two halves of
the rotated features pair up) and interleaved (GPT-J, GPT-NeoX's original: features 2i and
2i+1 pair up), and partial rotary (`rotary_dim < head_dim`: only the first rotary_dim
features rotate, the rest pass through, as GPT-NeoX, Phi and GLM do).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusile.dsl.errors import SignatureError
from fusile.dsl.fused import fused
from fusile.stdlib.registry import apply, autograd, call, custom_op, same_device


@fused
def rope_halves(x, cos, sin, rotary: int, partial: bool, backward: bool):
    """x * cos + rotate_half(x) * sin over the first `rotary` features (cos, sin: rotary
    wide). rotate_half is a rotation R with R^T = -R, so the backward is
    dy * cos - R(dy * sin)."""
    h = rotary // 2
    r = x[..., :rotary]
    v = r * sin
    turned = torch.cat([v[..., h:], -v[..., :h]], dim=-1) if backward else \
        torch.cat([-r[..., h:], r[..., :h]], dim=-1) * sin
    y = (r * cos + turned).to(x.dtype)
    return torch.cat([y, x[..., rotary:]], dim=-1) if partial else y


@fused
def rope_pairs(x, cos, sin, rotary: int, partial: bool, backward: bool):
    """The interleaved convention on x viewed as (..., head_dim / 2, 2) and cos, sin as
    (..., rotary / 2, 2): each pair (x0, x1) becomes (x0 c0 - x1 s0, x1 c1 + x0 s1); the
    backward takes (d0, d1) to (d0 c0 + d1 s1, d1 c1 - d0 s0)."""
    h = rotary // 2
    x0, x1 = x[..., :h, 0], x[..., :h, 1]
    c0, c1, s0, s1 = cos[..., 0], cos[..., 1], sin[..., 0], sin[..., 1]
    y0 = x0 * c0 + x1 * s1 if backward else x0 * c0 - x1 * s0
    y1 = x1 * c1 - x0 * s0 if backward else x1 * c1 + x0 * s1
    y = torch.stack([y0, y1], -1).to(x.dtype)
    return torch.cat([y, x[..., h:, :]], dim=-2) if partial else y


def _run(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool, backward: bool) -> Tensor:
    """The kernel for (..., seq, head_dim) x and (..., seq, rotary) tables (views, no copies);
    a result shaped as x, contiguous."""
    rotary, d = cos.shape[-1], x.shape[-1]
    if not interleaved:
        return rope_halves(x, cos, sin, rotary, rotary < d, backward)
    pairs = (d // 2, 2)
    out = rope_pairs(x.unflatten(-1, pairs), cos.unflatten(-1, (rotary // 2, 2)),
                     sin.unflatten(-1, (rotary // 2, 2)), rotary, rotary < d, backward)
    return out.flatten(-2)


@custom_op("rope")
def _rope(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    return _run(x, cos, sin, interleaved, False)


@_rope.register_fake
def _(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    return x.new_empty(x.shape)


@custom_op("rope_backward")
def _rope_bwd(dy: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    return _run(dy, cos, sin, interleaved, True)


@_rope_bwd.register_fake
def _(dy: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    return dy.new_empty(dy.shape)


def _rope_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[2])
    ctx.interleaved = inputs[3]


def _rope_grad(ctx, dy):
    cos, sin = ctx.saved_tensors
    return call(_rope_bwd, dy, cos, sin, ctx.interleaved), None, None, None


autograd(_rope, _rope_grad, _rope_setup)


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
    if x.dim() < 2 or x.shape[-1] % 2:
        raise SignatureError(f"fusile.stdlib.rope: expected x of (..., seq, head_dim) with "
                             f"an even head_dim, got {tuple(x.shape)}")
    seq, d = x.shape[-2], x.shape[-1]
    if cos.shape != sin.shape or cos.dim() not in (2, 3) or cos.shape[-2] != seq or \
            cos.shape[-1] % 2 or not 0 < cos.shape[-1] <= d:
        raise SignatureError(f"fusile.stdlib.rope: cos and sin must be (seq, rotary_dim) or "
                             f"(batch, seq, rotary_dim) with seq {seq} and an even rotary_dim "
                             f"<= head_dim {d}, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if cos.dim() == 3:
        if x.dim() < 3 or cos.shape[0] not in (1, x.shape[0]):
            raise SignatureError(f"fusile.stdlib.rope: cos of (batch, seq, rotary_dim) needs x "
                                 f"of (batch, ..., seq, head_dim), got {tuple(x.shape)}")
        heads = (slice(None), *(None,) * (x.dim() - 3))  # broadcast over the heads: a view
        cos, sin = cos[heads], sin[heads]
    if cos.requires_grad or sin.requires_grad:
        raise SignatureError("fusile.stdlib.rope: cos and sin are constants here; detach them")
    return apply(_rope, x, cos, sin, bool(interleaved))


def apply_rotary_pos_emb(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor,
                         position_ids: Tensor | None = None, unsqueeze_dim: int = 1
                         ) -> tuple[Tensor, Tensor]:
    """Hugging Face's apply_rotary_pos_emb (rotate-half), as a drop-in: q and k are (batch,
    heads, seq, head_dim), cos and sin (batch, seq, rotary_dim) or (seq, rotary_dim)."""
    if unsqueeze_dim != 1 or position_ids is not None:
        raise SignatureError("fusile.stdlib.apply_rotary_pos_emb: takes q, k of (batch, heads, "
                             "seq, head_dim) (unsqueeze_dim=1) and no position_ids, as current "
                             "Hugging Face models call it")
    return rope(q, cos, sin), rope(k, cos, sin)
