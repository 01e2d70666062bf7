"""Activations, plain and gated (gelu, silu, swiglu, geglu): custom ops with autograd; see
ops.py for how an op meets PyTorch."""

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

# ----------------------------------------------------------------------------- activations


def _unary(name: str, fwd, bwd):
    @custom_op(name)
    def op(x: Tensor) -> Tensor:
        return fwd(x)

    @op.register_fake
    def _(x: Tensor) -> Tensor:
        return x.new_empty(x.shape)

    @custom_op(name + "_backward")
    def op_bwd(dy: Tensor, x: Tensor) -> Tensor:
        return bwd(dy, x)

    @op_bwd.register_fake
    def _(dy: Tensor, x: Tensor) -> Tensor:
        return x.new_empty(x.shape)

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
        return a.new_empty(a.shape)

    @custom_op(name + "_backward")
    def op_bwd(dy: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        da, db = bwd(dy, a, b)
        return da, db

    @op_bwd.register_fake
    def _(dy: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return a.new_empty(a.shape), b.new_empty(b.shape)

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
