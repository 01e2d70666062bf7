"""Cross-entropy over class indices, with ignore_index and label smoothing: a custom op with
autograd, the targets checked as torch checks them."""

from __future__ import annotations

import torch
from torch import Tensor

from fusile.autograd import op_gradients
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


_REDUCE = {"none": 0, "sum": 1, "mean": 2}


@custom_op("cross_entropy")
def _cross_entropy(logits: Tensor, target: Tensor, ignore_index: int, smoothing: float,
                   reduce: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss: per row (N,) or reduced (), in the logits' dtype; lse (N, 1); the count of rows
    not ignored; whether every target is valid), all from one fused call."""
    loss, lse, count, ok = K.cross_entropy_fwd(logits, target, ignore_index, smoothing, reduce)
    return (loss.view(-1) if reduce == 0 else loss), lse, count, ok


@_cross_entropy.register_fake
def _(logits: Tensor, target: Tensor, ignore_index: int, smoothing: float, reduce: int
      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    rows = logits.shape[0]
    return (logits.new_empty((rows,) if reduce == 0 else ()),
            logits.new_empty((rows, 1), dtype=stat_dtype(logits)),
            logits.new_empty((), dtype=torch.int64), logits.new_empty((), dtype=torch.bool))


@custom_op("cross_entropy_backward")
def _cross_entropy_bwd(dloss: Tensor, logits: Tensor, target: Tensor, lse: Tensor,
                       count: Tensor, ignore_index: int, smoothing: float, reduce: int
                       ) -> Tensor:
    """The gradient derived from the forward (fusile.autograd), reading the forward's saved
    log-sum-exp and count instead of recomputing them: one pass over the logits."""
    args = [logits, target, ignore_index, smoothing, reduce]
    (g,) = op_gradients(K.cross_entropy_fwd, [logits], [dloss.view(-1, 1) if reduce == 0
                                                        else dloss], (0,), [True], args, {},
                        results=[None, lse, count, None])
    return g


@_cross_entropy_bwd.register_fake
def _(dloss: Tensor, logits: Tensor, target: Tensor, lse: Tensor, count: Tensor,
      ignore_index: int, smoothing: float, reduce: int) -> Tensor:
    return logits.new_empty(logits.shape)


def _ce_setup(ctx, inputs, output):
    logits, target, ignore_index, smoothing, reduce = inputs
    ctx.save_for_backward(logits, target, output[1], output[2])
    ctx.args = ignore_index, smoothing, reduce


def _ce_grad(ctx, dloss, _dlse, _dcount, _dok):
    logits, target, lse, count = ctx.saved_tensors
    g = call(_cross_entropy_bwd, dloss.contiguous(), logits, target, lse, count, *ctx.args)
    return g, None, None, None, None


autograd(_cross_entropy, _ce_grad, _ce_setup)


def cross_entropy(input: Tensor, target: Tensor, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0,
                  check_targets: bool = True) -> Tensor:
    """torch.nn.functional.cross_entropy for (N, C) logits and (N,) class indices. The logits
    are read in their own dtype, a tile at a time; no float32 copy is made. The gradient is
    one pass over the logits using the saved per-row log-sum-exp.

    The loss, its reduction, the count of rows not ignored (for the mean) and the target
    check all come from one fused call, and the backward from another.

    check_targets: a target outside [0, C) other than ignore_index is an error, as in torch
    (on the CPU a SignatureError naming it; on a GPU or while compiling a device-side assert,
    which fails the next synchronising call and, as torch's own, leaves the CUDA context
    unusable). The kernel computes the check either way; False skips acting on it (the
    assert's launch; on the CPU, a sync): a bad target then gives a wrong loss."""
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
    if reduction not in _REDUCE:
        raise SignatureError(f"fusile.stdlib.cross_entropy: reduction must be 'mean', 'sum' or "
                             f"'none', got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:  # also false for nan
        raise SignatureError(f"fusile.stdlib.cross_entropy: label_smoothing must be in [0, 1], "
                             f"got {label_smoothing!r}")
    loss, _, _, ok = apply(_cross_entropy, input, target, int(ignore_index),
                           float(label_smoothing), _REDUCE[reduction])
    if check_targets:
        target_check(ok, input.shape[1], target, int(ignore_index))
    return loss


def target_check(ok: Tensor, classes: int, target: Tensor, ignore_index: int,
                 op: str = "cross_entropy") -> None:
    """Raise (CPU) or assert on the device (GPU, compiling) unless `ok`: every target is a
    class or ignore_index. The kernel computed `ok`; a bad target is read only to compare."""
    message = (f"fusile.stdlib.{op}: a target is outside [0, {classes}) and is not "
               f"ignore_index ({ignore_index})")
    if target.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(ok):
            bad = ((target < 0) | (target >= classes)) & (target != ignore_index)
            raise SignatureError(f"{message}: {int(target[bad][0])}")
        return
    torch._assert_async(ok, message)
