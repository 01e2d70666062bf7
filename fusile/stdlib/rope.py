"""Rotary position embedding (rotate-half convention): a custom op with autograd."""

from __future__ import annotations

from torch import Tensor

from fusile.dsl.errors import SignatureError
from fusile.stdlib import kernels as K
from fusile.stdlib.registry import (
    apply,
    autograd,
    call,
    custom_op,
    same_device,
)

# ----------------------------------------------------------------------------- rotary embedding


@custom_op("rope")
def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return K.rope_fwd(x, cos, sin)


@_rope.register_fake
def _(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x.new_empty(x.shape)


@custom_op("rope_backward")
def _rope_bwd(dy: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return K.rope_bwd(dy, cos, sin)


@_rope_bwd.register_fake
def _(dy: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return dy.new_empty(dy.shape)


def _rope_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[2])


def _rope_grad(ctx, dy):
    cos, sin = ctx.saved_tensors
    return call(_rope_bwd, dy.contiguous(), cos, sin), None, None


autograd(_rope, _rope_grad, _rope_setup)


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding, the rotate-half convention (LLaMA, Hugging Face's
    apply_rotary_pos_emb): x * cos + rotate_half(x) * sin. x is (..., seq, head_dim); cos and
    sin are (seq, head_dim) with each half repeated, as those models build them. cos and sin
    are treated as constants: no gradient flows to them."""
    same_device("rope", x, cos, sin)
    d = x.shape[-1]
    if d % 2 or x.dim() < 2:
        raise SignatureError(f"fusile.stdlib.rope: expected (..., seq, head_dim) with an even "
                             f"head_dim, got {tuple(x.shape)}")
    if cos.shape != sin.shape or tuple(cos.shape) != tuple(x.shape[-2:]):
        raise SignatureError(f"fusile.stdlib.rope: cos and sin must be (seq, head_dim) = "
                             f"{tuple(x.shape[-2:])}, got {tuple(cos.shape)} and "
                             f"{tuple(sin.shape)}")
    if cos.requires_grad or sin.requires_grad:
        raise SignatureError("fusile.stdlib.rope: cos and sin are constants here; detach them")
    halves = (*x.shape[:-1], 2, d // 2)
    table = (cos.shape[0], 2, d // 2)
    out = apply(_rope, x.reshape(halves), cos.reshape(table), sin.reshape(table))
    return out.view(x.shape)
