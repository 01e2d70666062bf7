"""torch-facing standard library: custom ops (torch.library) with fake implementations and
autograd, so torch.compile(fullgraph=True) traces through them and CUDA graphs capture them.

Each public function mirrors its torch.nn.functional counterpart's arguments and defaults.
The kernels are the DSL functions in kernels.py and the registration machinery is in
registry.py; this file validates arguments, reshapes to rows x features, and wires forward to
backward.
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
    autograd,
    call,
    check_param,
    custom_op,
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
        return torch.empty_like(x)

    @custom_op(name + "_backward")
    def op_bwd(dy: Tensor, y: Tensor, dim: int) -> Tensor:
        return bwd(dy, y, dim)

    @op_bwd.register_fake
    def _(dy: Tensor, y: Tensor, dim: int) -> Tensor:
        return torch.empty_like(y)

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
    return torch.empty_like(x), x.new_empty((x.shape[0], 1), dtype=stat_dtype(x))


@custom_op("rms_norm_backward")
def _rms_norm_bwd(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    dx, dw = K.rms_norm_bwd(dy, x, weight, rstd)
    return dx, dw


@_rms_norm_bwd.register_fake
def _(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(weight)


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
    shape = norm_shape("rms_norm", input, normalized_shape)
    same_device("rms_norm", input, weight)
    check_param("rms_norm", weight, input, shape, "weight")
    n = math.prod(shape)
    eps = torch.finfo(input.dtype).eps if eps is None else eps
    w = weight.reshape(n) if weight is not None else ones_for(input, n)
    y, _ = apply(_rms_norm, as_rows(input, n), w, float(eps))
    return y.view(input.shape)


@custom_op("add_rms_norm")
def _add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float
                  ) -> tuple[Tensor, Tensor, Tensor]:
    y, h, rstd = K.add_rms_norm_fwd(x, residual, weight, eps)
    return y, h, rstd


@_add_rms_norm.register_fake
def _(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return (torch.empty_like(x), torch.empty_like(x),
            x.new_empty((x.shape[0], 1), dtype=stat_dtype(x)))


@custom_op("add_rms_norm_backward")
def _add_rms_norm_bwd(dy: Tensor, dh: Tensor, h: Tensor, weight: Tensor, rstd: Tensor
                      ) -> tuple[Tensor, Tensor]:
    dx, dw = K.add_rms_norm_bwd(dy, dh, h, weight, rstd)
    return dx, dw


@_add_rms_norm_bwd.register_fake
def _(dy: Tensor, dh: Tensor, h: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(h), torch.empty_like(weight)


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
    shape = norm_shape("add_rms_norm", input, normalized_shape)
    same_device("add_rms_norm", input, residual, weight)
    if residual.shape != input.shape or residual.dtype != input.dtype:
        raise SignatureError("fusile.stdlib.add_rms_norm: residual must match input's shape "
                             "and dtype")
    check_param("add_rms_norm", weight, input, shape, "weight")
    n = math.prod(shape)
    eps = torch.finfo(input.dtype).eps if eps is None else eps
    w = weight.reshape(n) if weight is not None else ones_for(input, n)
    y, h, _ = apply(_add_rms_norm, as_rows(input, n), as_rows(residual, n), w, float(eps))
    return y.view(input.shape), h.view(input.shape)


@custom_op("layer_norm")
def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
    y, mu, rstd = K.layer_norm_fwd(x, weight, bias, eps)
    return y, mu, rstd


@_layer_norm.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    stat = x.new_empty((x.shape[0], 1), dtype=stat_dtype(x))
    return torch.empty_like(x), stat, torch.empty_like(stat)


@custom_op("layer_norm_backward")
def _layer_norm_bwd(dy: Tensor, x: Tensor, weight: Tensor, mu: Tensor, rstd: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = K.layer_norm_bwd(dy, x, weight, mu, rstd)
    return dx, dw, db


@_layer_norm_bwd.register_fake
def _(dy: Tensor, x: Tensor, weight: Tensor, mu: Tensor, rstd: Tensor
      ) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)


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
    shape = norm_shape("layer_norm", input, normalized_shape)
    same_device("layer_norm", input, weight, bias)
    check_param("layer_norm", weight, input, shape, "weight")
    check_param("layer_norm", bias, input, shape, "bias")
    n = math.prod(shape)
    w = weight.reshape(n) if weight is not None else ones_for(input, n)
    b = bias.reshape(n) if bias is not None else torch.zeros_like(w)
    y, _, _ = apply(_layer_norm, as_rows(input, n), w, b, float(eps))
    return y.view(input.shape)


@custom_op("add_layer_norm")
def _add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor, eps: float
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    y, h, mu, rstd = K.add_layer_norm_fwd(x, residual, weight, bias, eps)
    return y, h, mu, rstd


@_add_layer_norm.register_fake
def _(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor, eps: float
      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    stat = x.new_empty((x.shape[0], 1), dtype=stat_dtype(x))
    return torch.empty_like(x), torch.empty_like(x), stat, torch.empty_like(stat)


@custom_op("add_layer_norm_backward")
def _add_layer_norm_bwd(dy: Tensor, dh: Tensor, h: Tensor, weight: Tensor, mu: Tensor,
                        rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = K.add_layer_norm_bwd(dy, dh, h, weight, mu, rstd)
    return dx, dw, db


@_add_layer_norm_bwd.register_fake
def _(dy: Tensor, dh: Tensor, h: Tensor, weight: Tensor, mu: Tensor, rstd: Tensor
      ) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(h), torch.empty_like(weight), torch.empty_like(weight)


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
    shape = norm_shape("add_layer_norm", input, normalized_shape)
    same_device("add_layer_norm", input, residual, weight, bias)
    if residual.shape != input.shape or residual.dtype != input.dtype:
        raise SignatureError("fusile.stdlib.add_layer_norm: residual must match input's shape "
                             "and dtype")
    check_param("add_layer_norm", weight, input, shape, "weight")
    check_param("add_layer_norm", bias, input, shape, "bias")
    n = math.prod(shape)
    w = weight.reshape(n) if weight is not None else ones_for(input, n)
    b = bias.reshape(n) if bias is not None else torch.zeros_like(w)
    y, h, _, _ = apply(_add_layer_norm, as_rows(input, n), as_rows(residual, n), w, b, float(eps))
    return y.view(input.shape), h.view(input.shape)


# ----------------------------------------------------------------------------- activations


def _unary(name: str, fwd, bwd):
    @custom_op(name)
    def op(x: Tensor) -> Tensor:
        return fwd(x)

    @op.register_fake
    def _(x: Tensor) -> Tensor:
        return torch.empty_like(x)

    @custom_op(name + "_backward")
    def op_bwd(dy: Tensor, x: Tensor) -> Tensor:
        return bwd(dy, x)

    @op_bwd.register_fake
    def _(dy: Tensor, x: Tensor) -> Tensor:
        return torch.empty_like(x)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def grad(ctx, dy):
        (x,) = ctx.saved_tensors
        return call(op_bwd, dy.contiguous(), x)

    autograd(op, grad, setup)
    return op


_gelu = _unary("gelu", K.gelu_erf, K.gelu_bwd)
_gelu_tanh = _unary("gelu_tanh", K.gelu_tanh, K.gelu_tanh_bwd)
_silu = _unary("silu", K.silu_fwd, K.silu_bwd)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """torch.nn.functional.gelu, exact (erf) or approximate='tanh'."""
    same_device("gelu", input)
    _check_approximate("gelu", approximate)
    return apply(_gelu_tanh if approximate == "tanh" else _gelu, input)


def silu(input: Tensor) -> Tensor:
    """torch.nn.functional.silu."""
    same_device("silu", input)
    return apply(_silu, input)


def _gated(name: str, fwd, bwd):
    @custom_op(name)
    def op(a: Tensor, b: Tensor) -> Tensor:
        return fwd(a, b)

    @op.register_fake
    def _(a: Tensor, b: Tensor) -> Tensor:
        return torch.empty_like(a)

    @custom_op(name + "_backward")
    def op_bwd(dy: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        da, db = bwd(dy, a, b)
        return da, db

    @op_bwd.register_fake
    def _(dy: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return torch.empty_like(a), torch.empty_like(b)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def grad(ctx, dy):
        a, b = ctx.saved_tensors
        return call(op_bwd, dy.contiguous(), a, b)

    autograd(op, grad, setup)
    return op


_swiglu = _gated("swiglu", K.swiglu_fwd, K.swiglu_bwd)
_geglu = _gated("geglu", K.geglu_fwd, K.geglu_bwd)
_geglu_tanh = _gated("geglu_tanh", K.geglu_tanh_fwd, K.geglu_tanh_bwd)


def _check_gated(name: str, a: Tensor, b: Tensor) -> None:
    same_device(name, a, b)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise SignatureError(f"fusile.stdlib.{name}: gate and up projections must have the "
                             f"same shape and dtype, got {tuple(a.shape)} {a.dtype} and "
                             f"{tuple(b.shape)} {b.dtype}")


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up, the LLaMA MLP's gate."""
    _check_gated("swiglu", gate, up)
    return apply(_swiglu, gate, up)


def _check_approximate(name: str, approximate: str) -> None:
    if approximate not in ("none", "tanh"):
        raise SignatureError(f"fusile.stdlib.{name}: approximate must be 'none' or 'tanh', got "
                             f"{approximate!r}")


def geglu(gate: Tensor, up: Tensor, approximate: str = "none") -> Tensor:
    """gelu(gate) * up, exact (erf) or approximate='tanh'."""
    _check_gated("geglu", gate, up)
    _check_approximate("geglu", approximate)
    return apply(_geglu_tanh if approximate == "tanh" else _geglu, gate, up)


# ----------------------------------------------------------------------------- cross-entropy


@custom_op("cross_entropy")
def _cross_entropy(logits: Tensor, target: Tensor, ignore_index: int, smoothing: float
                   ) -> tuple[Tensor, Tensor]:
    loss, lse = K.cross_entropy_fwd(logits, target, ignore_index, smoothing)
    return loss.view(-1), lse


@_cross_entropy.register_fake
def _(logits: Tensor, target: Tensor, ignore_index: int, smoothing: float
      ) -> tuple[Tensor, Tensor]:
    rows = logits.shape[0]
    return (logits.new_empty(rows, dtype=stat_dtype(logits)),
            logits.new_empty((rows, 1), dtype=stat_dtype(logits)))


@custom_op("cross_entropy_backward")
def _cross_entropy_bwd(dloss: Tensor, logits: Tensor, target: Tensor, lse: Tensor,
                       ignore_index: int, smoothing: float) -> Tensor:
    return K.cross_entropy_bwd(dloss.view(-1, 1), logits, target, lse, ignore_index, smoothing)


@_cross_entropy_bwd.register_fake
def _(dloss: Tensor, logits: Tensor, target: Tensor, lse: Tensor, ignore_index: int,
      smoothing: float) -> Tensor:
    return torch.empty_like(logits)


def _ce_setup(ctx, inputs, output):
    logits, target, ignore_index, smoothing = inputs
    ctx.save_for_backward(logits, target, output[1])
    ctx.ignore_index, ctx.smoothing = ignore_index, smoothing


def _ce_grad(ctx, dloss, _dlse):
    logits, target, lse = ctx.saved_tensors
    g = call(_cross_entropy_bwd, dloss.contiguous(), logits, target, lse, ctx.ignore_index,
             ctx.smoothing)
    return g, None, None, None


autograd(_cross_entropy, _ce_grad, _ce_setup)


def cross_entropy(input: Tensor, target: Tensor, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0,
                  check_targets: bool = True) -> Tensor:
    """torch.nn.functional.cross_entropy for (N, C) logits and (N,) class indices. The logits
    are read in their own dtype, a tile at a time; no float32 copy is made. The gradient is
    one pass over the logits using the saved per-row log-sum-exp.

    check_targets: a target outside [0, C) other than ignore_index is an error, as in torch
    (on the CPU a SignatureError naming it; on a GPU or while compiling a device-side assert,
    which fails the next synchronising call). False skips the check and its small read of
    `target`: a bad target then gives a wrong loss."""
    same_device("cross_entropy", input)
    if input.dim() != 2 or target.shape != input.shape[:1]:
        raise SignatureError(f"fusile.stdlib.cross_entropy: expected logits (N, C) and target "
                             f"(N,), got {tuple(input.shape)} and {tuple(target.shape)}")
    if target.dtype not in (torch.int64, torch.int32):
        raise SignatureError(f"fusile.stdlib.cross_entropy: target must hold class indices "
                             f"(int64), got {target.dtype}")
    if target.device != input.device:
        raise SignatureError("fusile.stdlib.cross_entropy: target and logits are on different "
                             "devices")
    if reduction not in ("mean", "sum", "none"):
        raise SignatureError(f"fusile.stdlib.cross_entropy: reduction must be 'mean', 'sum' or "
                             f"'none', got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:  # also false for nan
        raise SignatureError(f"fusile.stdlib.cross_entropy: label_smoothing must be in [0, 1], "
                             f"got {label_smoothing!r}")
    if check_targets:
        _check_targets(input, target, int(ignore_index))
    loss, _ = apply(_cross_entropy, input, target, int(ignore_index), float(label_smoothing))
    if reduction == "none":
        return loss.to(input.dtype)
    total = loss.sum()
    if reduction == "sum":
        return total.to(input.dtype)
    count = (target != ignore_index).sum()
    return (total / count).to(input.dtype)


def _check_targets(logits: Tensor, target: Tensor, ignore_index: int) -> None:
    classes = logits.shape[1]
    bad = ((target < 0) | (target >= classes)) & (target != ignore_index)
    message = (f"fusile.stdlib.cross_entropy: a target is outside [0, {classes}) and is not "
               f"ignore_index ({ignore_index})")
    if target.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(bad.any()):
            first = int(target[bad][0])
            raise SignatureError(f"{message}: {first}")
        return
    torch._assert_async(~bad.any(), message)


# ----------------------------------------------------------------------------- rotary embedding


@custom_op("rope")
def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return K.rope_fwd(x, cos, sin)


@_rope.register_fake
def _(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return torch.empty_like(x)


@custom_op("rope_backward")
def _rope_bwd(dy: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return K.rope_bwd(dy, cos, sin)


@_rope_bwd.register_fake
def _(dy: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return torch.empty_like(dy)


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
