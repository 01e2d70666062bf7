"""torch-facing standard library: custom ops (torch.library) with fake implementations and
autograd, so torch.compile(fullgraph=True) traces through them and CUDA graphs capture them.

Each public function mirrors its torch.nn.functional counterpart's arguments and defaults.
The kernels are the DSL functions in kernels.py and the registration machinery is in
registry.py; this file (softmax and the norms) and its siblings (activations.py,
cross_entropy.py, rope.py, attention.py) validate arguments, reshape to rows x features, and
wire forward to backward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fusile.dsl.errors import SignatureError
from fusile.stdlib import kernels as K
from fusile.stdlib.registry import (
    apply,
    as_rows,
    as_vector,
    autograd,
    call,
    check_param,
    custom_op,
    default_eps,
    like_input,
    norm_shape,
    ones_for,
    same_device,
    stat_dtype,
)

# ----------------------------------------------------------------------------- softmax


def _rowwise(name: str, fwd, bwd):
    """A normalizer over `dim` whose gradient needs only its output (softmax, log_softmax)."""
    @custom_op(name)
    def op(x: Tensor, dim: int) -> Tensor:
        return fwd(x, dim)

    @op.register_fake
    def _(x: Tensor, dim: int) -> Tensor:
        return x.new_empty(x.shape)

    @custom_op(name + "_backward")
    def op_bwd(dy: Tensor, y: Tensor, dim: int) -> Tensor:
        return bwd(dy, y, dim)

    @op_bwd.register_fake
    def _(dy: Tensor, y: Tensor, dim: int) -> Tensor:
        return y.new_empty(y.shape)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.dim = inputs[1]

    def grad(ctx, dy):
        (y,) = ctx.saved_tensors
        return call(op_bwd, dy.contiguous(), y, ctx.dim), None

    autograd(op, grad, setup)
    return op


_softmax = _rowwise("softmax", K.softmax_fwd, K.softmax_bwd)
_log_softmax = _rowwise("log_softmax", K.log_softmax_fwd, K.log_softmax_bwd)


def softmax(input: Tensor, dim: int = -1) -> Tensor:
    """torch.softmax(input, dim), fused (one read, one write)."""
    same_device("softmax", input)
    return apply(_softmax, input, dim)


def log_softmax(input: Tensor, dim: int = -1) -> Tensor:
    """torch.log_softmax(input, dim), fused."""
    same_device("log_softmax", input)
    return apply(_log_softmax, input, dim)


# ----------------------------------------------------------------------------- norms


@custom_op("rms_norm")
def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    y, rstd = K.rms_norm_fwd(x, weight, eps)
    return y, rstd


@_rms_norm.register_fake
def _(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape), x.new_empty((x.shape[0], 1), dtype=stat_dtype(x))


@custom_op("rms_norm_backward")
def _rms_norm_bwd(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    dx, dw = K.rms_norm_bwd(dy, x, weight, rstd)
    return dx, dw


@_rms_norm_bwd.register_fake
def _(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def _rms_setup(ctx, inputs, output):
    x, weight, _eps = inputs
    ctx.save_for_backward(x, weight, output[1])


def _rms_grad(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = call(_rms_norm_bwd, dy.contiguous(), x, weight, rstd)
    return dx, dw, None


autograd(_rms_norm, _rms_grad, _rms_setup)


def rms_norm(input: Tensor, normalized_shape: int | list[int] | tuple[int, ...],
             weight: Tensor | None = None, eps: float | None = None) -> Tensor:
    """torch.nn.functional.rms_norm, fused; saves only a float32 rstd per row."""
    shape = norm_shape("rms_norm", input, normalized_shape, weight)
    check_param("rms_norm", weight, input, shape, "weight")
    n = math.prod(shape)
    eps = default_eps(input.dtype) if eps is None else eps
    w = as_vector(weight, n) if weight is not None else ones_for(input, n)
    y, _ = apply(_rms_norm, as_rows(input, n), w, float(eps))
    return like_input(y, input)


@custom_op("add_rms_norm")
def _add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float
                  ) -> tuple[Tensor, Tensor, Tensor]:
    y, h, rstd = K.add_rms_norm_fwd(x, residual, weight, eps)
    return y, h, rstd


@_add_rms_norm.register_fake
def _(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return (x.new_empty(x.shape), x.new_empty(x.shape),
            x.new_empty((x.shape[0], 1), dtype=stat_dtype(x)))


@custom_op("add_rms_norm_backward")
def _add_rms_norm_bwd(dy: Tensor, dh: Tensor, h: Tensor, weight: Tensor, rstd: Tensor
                      ) -> tuple[Tensor, Tensor]:
    dx, dw = K.add_rms_norm_bwd(dy, dh, h, weight, rstd)
    return dx, dw


@_add_rms_norm_bwd.register_fake
def _(dy: Tensor, dh: Tensor, h: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    return h.new_empty(h.shape), weight.new_empty(weight.shape)


def _add_rms_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], inputs[2], output[2])


def _add_rms_grad(ctx, dy, dh, _drstd):
    h, weight, rstd = ctx.saved_tensors
    dh = torch.zeros_like(h) if dh is None else dh.contiguous()
    dx, dw = call(_add_rms_norm_bwd, dy.contiguous(), dh, h, weight, rstd)
    return dx, dx, dw, None


autograd(_add_rms_norm, _add_rms_grad, _add_rms_setup)


def add_rms_norm(input: Tensor, residual: Tensor,
                 normalized_shape: int | list[int] | tuple[int, ...],
                 weight: Tensor | None = None, eps: float | None = None) -> tuple[Tensor, Tensor]:
    """(rms_norm(input + residual), input + residual) in one pass: the pre-norm block's
    residual add and norm, returning the new residual stream too."""
    shape = norm_shape("add_rms_norm", input, normalized_shape, residual, weight)
    if residual.shape != input.shape or residual.dtype != input.dtype:
        raise SignatureError("fusile.stdlib.add_rms_norm: residual must match input's shape "
                             "and dtype")
    check_param("add_rms_norm", weight, input, shape, "weight")
    n = math.prod(shape)
    eps = default_eps(input.dtype) if eps is None else eps
    w = as_vector(weight, n) if weight is not None else ones_for(input, n)
    y, h, _ = apply(_add_rms_norm, as_rows(input, n), as_rows(residual, n), w, float(eps))
    return like_input(y, input), like_input(h, input)


@custom_op("layer_norm")
def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
    y, mu, rstd = K.layer_norm_fwd(x, weight, bias, eps)
    return y, mu, rstd


@_layer_norm.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    stat = x.new_empty((x.shape[0], 1), dtype=stat_dtype(x))
    return x.new_empty(x.shape), stat, stat.new_empty(stat.shape)


@custom_op("layer_norm_backward")
def _layer_norm_bwd(dy: Tensor, x: Tensor, weight: Tensor, mu: Tensor, rstd: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = K.layer_norm_bwd(dy, x, weight, mu, rstd)
    return dx, dw, db


@_layer_norm_bwd.register_fake
def _(dy: Tensor, x: Tensor, weight: Tensor, mu: Tensor, rstd: Tensor
      ) -> tuple[Tensor, Tensor, Tensor]:
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _ln_setup(ctx, inputs, output):
    x, weight, _bias, _eps = inputs
    ctx.save_for_backward(x, weight, output[1], output[2])


def _ln_grad(ctx, dy, _dmu, _drstd):
    x, weight, mu, rstd = ctx.saved_tensors
    dx, dw, db = call(_layer_norm_bwd, dy.contiguous(), x, weight, mu, rstd)
    return dx, dw, db, None


autograd(_layer_norm, _ln_grad, _ln_setup)


def layer_norm(input: Tensor, normalized_shape: int | list[int] | tuple[int, ...],
               weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """torch.nn.functional.layer_norm, fused; saves a float32 mean and rstd per row."""
    shape = norm_shape("layer_norm", input, normalized_shape, weight, bias)
    check_param("layer_norm", weight, input, shape, "weight")
    check_param("layer_norm", bias, input, shape, "bias")
    n = math.prod(shape)
    w = as_vector(weight, n) if weight is not None else ones_for(input, n)
    b = as_vector(bias, n) if bias is not None else torch.zeros_like(w)
    y, _, _ = apply(_layer_norm, as_rows(input, n), w, b, float(eps))
    return like_input(y, input)


@custom_op("add_layer_norm")
def _add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor, eps: float
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    y, h, mu, rstd = K.add_layer_norm_fwd(x, residual, weight, bias, eps)
    return y, h, mu, rstd


@_add_layer_norm.register_fake
def _(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor, eps: float
      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    stat = x.new_empty((x.shape[0], 1), dtype=stat_dtype(x))
    return x.new_empty(x.shape), x.new_empty(x.shape), stat, stat.new_empty(stat.shape)


@custom_op("add_layer_norm_backward")
def _add_layer_norm_bwd(dy: Tensor, dh: Tensor, h: Tensor, weight: Tensor, mu: Tensor,
                        rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = K.add_layer_norm_bwd(dy, dh, h, weight, mu, rstd)
    return dx, dw, db


@_add_layer_norm_bwd.register_fake
def _(dy: Tensor, dh: Tensor, h: Tensor, weight: Tensor, mu: Tensor, rstd: Tensor
      ) -> tuple[Tensor, Tensor, Tensor]:
    return h.new_empty(h.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _add_ln_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], inputs[2], output[2], output[3])


def _add_ln_grad(ctx, dy, dh, _dmu, _drstd):
    h, weight, mu, rstd = ctx.saved_tensors
    dh = torch.zeros_like(h) if dh is None else dh.contiguous()
    dx, dw, db = call(_add_layer_norm_bwd, dy.contiguous(), dh, h, weight, mu, rstd)
    return dx, dx, dw, db, None


autograd(_add_layer_norm, _add_ln_grad, _add_ln_setup)


def add_layer_norm(input: Tensor, residual: Tensor,
                   normalized_shape: int | list[int] | tuple[int, ...],
                   weight: Tensor | None = None, bias: Tensor | None = None,
                   eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """(layer_norm(input + residual), input + residual) in one pass."""
    shape = norm_shape("add_layer_norm", input, normalized_shape, residual, weight, bias)
    if residual.shape != input.shape or residual.dtype != input.dtype:
        raise SignatureError("fusile.stdlib.add_layer_norm: residual must match input's shape "
                             "and dtype")
    check_param("add_layer_norm", weight, input, shape, "weight")
    check_param("add_layer_norm", bias, input, shape, "bias")
    n = math.prod(shape)
    w = as_vector(weight, n) if weight is not None else ones_for(input, n)
    b = as_vector(bias, n) if bias is not None else torch.zeros_like(w)
    y, h, _, _ = apply(_add_layer_norm, as_rows(input, n), as_rows(residual, n), w, b, float(eps))
    return like_input(y, input), like_input(h, input)
