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
from fusile.stdlib.define import define
from fusile.stdlib.registry import (
    apply,
    as_rows,
    as_vector,
    check_param,
    default_eps,
    like_input,
    norm_shape,
    ones_for,
    same_device,
)

# ----------------------------------------------------------------------------- softmax


_softmax = define("softmax", K.softmax_fwd, K.softmax_bwd, "(Tensor x, int dim) -> (Tensor y)",
                  save=("y",), grad_of=("y",), grads={"x": 0}, keep=("dim",))
_log_softmax = define("log_softmax", K.log_softmax_fwd, K.log_softmax_bwd,
                      "(Tensor x, int dim) -> (Tensor y)", save=("y",), grad_of=("y",),
                      grads={"x": 0}, keep=("dim",))


def softmax(input: Tensor, dim: int = -1) -> Tensor:
    """torch.softmax(input, dim), fused (one read, one write)."""
    same_device("softmax", input)
    return apply(_softmax, input, dim)


def log_softmax(input: Tensor, dim: int = -1) -> Tensor:
    """torch.log_softmax(input, dim), fused."""
    same_device("log_softmax", input)
    return apply(_log_softmax, input, dim)


# ----------------------------------------------------------------------------- norms


_rms_norm = define("rms_norm", K.rms_norm_fwd, K.rms_norm_bwd,
                   "(Tensor x, Tensor weight, float eps) -> (Tensor y, Tensor rstd)",
                   save=("x", "weight", "rstd"), grad_of=("y",), grads={"x": 0, "weight": 1})


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


_add_rms_norm = define(
    "add_rms_norm", K.add_rms_norm_fwd, K.add_rms_norm_bwd,
    "(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor y, Tensor h, Tensor rstd)",
    save=("h", "weight", "rstd"), grad_of=("y", "h"), grads={"x": 0, "residual": 0, "weight": 1})


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


_layer_norm = define(
    "layer_norm", K.layer_norm_fwd, K.layer_norm_bwd,
    "(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor y, Tensor mu, Tensor rstd)",
    save=("x", "weight", "mu", "rstd"), grad_of=("y",), grads={"x": 0, "weight": 1, "bias": 2})


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


_add_layer_norm = define(
    "add_layer_norm", K.add_layer_norm_fwd, K.add_layer_norm_bwd,
    "(Tensor x, Tensor residual, Tensor weight, Tensor bias, float eps) -> "
    "(Tensor y, Tensor h, Tensor mu, Tensor rstd)",
    save=("h", "weight", "mu", "rstd"), grad_of=("y", "h"),
    grads={"x": 0, "residual": 0, "weight": 1, "bias": 2})


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
