"""Cross-entropy over class indices, with ignore_index and label smoothing: a custom op with
autograd, the targets checked as torch checks them."""

from __future__ import annotations

import torch
from torch import Tensor

from fusile.dsl.errors import SignatureError
from fusile.stdlib import kernels as K
from fusile.stdlib.registry import (
    apply,
    autograd,
    call,
    custom_op,
    same_device,
    stat_dtype,
)

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
    return logits.new_empty(logits.shape)


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
    which fails the next synchronising call and, as torch's own, leaves the CUDA context
    unusable). False skips the check, its read of `target` and its few small launches: a bad
    target then gives a wrong loss."""
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
