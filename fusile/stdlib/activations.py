"""Activations, plain and gated (gelu, silu, swiglu, geglu): custom ops with autograd; see
ops.py for how an op meets PyTorch."""

from __future__ import annotations

from torch import Tensor

from fusile.dsl.errors import SignatureError
from fusile.stdlib import kernels as K
from fusile.stdlib.define import define
from fusile.stdlib.registry import (
    apply,
    same_device,
)

# ----------------------------------------------------------------------------- activations


def _unary(name: str, fwd, bwd):
    return define(name, fwd, bwd, "(Tensor x) -> (Tensor y)", save=("x",), grad_of=("y",),
                  grads={"x": 0})


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
    return define(name, fwd, bwd, "(Tensor a, Tensor b) -> (Tensor y)", save=("a", "b"),
                  grad_of=("y",), grads={"a": 0, "b": 1})


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
