"""Linear cross-entropy: the loss of `input @ weight.T (+ bias)` over class indices without
the (tokens x vocab) logits in memory.

The rows go through in chunks of up to 1024 rows within 256 MiB of logits (`chunk_rows`;
FUSILE_CE_CHUNK_MIB), never smaller than Liger-Kernel's rule (a chunk's logits about as large
as the input). Per chunk: the logits by one matmul (torch, cuBLAS), then one fused
call (`kernels.linear_cross_entropy_rows`) reads them once and writes each row's loss and the
gradient with respect to them, then two matmuls turn that gradient into the chunk's rows of
d input and its share of d weight. With a 'mean' or 'sum' reduction the gradients for an
upstream gradient of 1 are made in the forward (the loss is a training step's last op) and
the backward scales them; with 'none' the backward runs the chunks again with each row's
upstream gradient.

What this is not yet: the compiler does not recognise `cross_entropy(h @ w.T, t)` in the
DSL; the matmuls are torch's. d weight accumulates in the weight's dtype across chunks, as
Liger's does (one rounding per chunk for 16-bit weights)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fusile import config
from fusile.dsl.errors import SignatureError
from fusile.stdlib import kernels as K
from fusile.stdlib.cross_entropy import target_check
from fusile.stdlib.registry import apply, autograd, call, custom_op, same_device

_REDUCE = {"none": 0, "sum": 1, "mean": 2}
_EMPTY = (0,)
_FULL_SPEED_ROWS = 1024  # a chunk's rows: the d weight matmul's depth


def chunk_rows(rows: int, hidden: int, vocab: int, itemsize: int = 2) -> int:
    """Rows per chunk, a power of two. Each chunk adds its d weight (V x H) into the sum:
    a read and a write of d weight around a matmul whose depth is the chunk's rows, so short
    chunks run it far below speed (measured on an H100 at 8192 x 4096 x 128256 bf16: 256
    rows 64.8 ms, 1024 rows 43.2 ms, 2048 rows 42.0 ms). So up to 1024 rows, as many as
    FUSILE_CE_CHUNK_MIB of logits allow (256 MiB: 1024 rows of a 128k vocabulary in bf16,
    512 of 256k); never fewer than Liger's rule (a chunk's logits about the input's size),
    which is the rule alone at FUSILE_CE_CHUNK_MIB=0."""
    per = max(1, math.ceil(vocab / max(hidden, 1)))
    rule = _pow2_at_least(math.ceil(rows / per))
    room = (max(0, config.get("ce_chunk_mib")) << 20) // max(1, vocab * itemsize)
    wide = 1 << (min(room, _FULL_SPEED_ROWS).bit_length() - 1) if room else 0
    return min(_pow2_at_least(rows), max(rule, wide))


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _chunks(h: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None,
            ignore_index: int, smoothing: float, softcap: float, scale: Tensor,
            grads: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every row's loss (float32) and, with `grads`, d input, d weight and d bias for the
    row gradients `scale` (0-d, or per row (N, 1)): one chunk of logits at a time."""
    n, v = h.shape[0], weight.shape[0]
    losses = torch.empty(n, dtype=torch.float32, device=h.device)
    dh = h.new_empty(h.shape) if grads else h.new_empty(_EMPTY)  # contiguous, as the fakes
    dw = weight.new_zeros(weight.shape) if grads else weight.new_empty(_EMPTY)
    db = torch.zeros(v, dtype=torch.float32, device=h.device) \
        if grads and bias is not None else h.new_empty(_EMPTY)
    step = chunk_rows(n, h.shape[1], v, h.element_size())
    capped = int(softcap > 0.0)
    for s in range(0, n, step):
        hc, rows = h[s:s + step], slice(s, s + step)
        z = hc @ weight.T if bias is None else torch.addmm(bias, hc, weight.T)
        sc = scale if scale.dim() == 0 else scale[rows]
        loss, dz = K.linear_cross_entropy_rows(z, target[rows], sc, ignore_index, smoothing,
                                               softcap if capped else 1.0, capped)
        losses[rows] = loss.view(-1)
        del z
        if grads:
            torch.mm(dz, weight, out=dh[rows])
            dw.addmm_(dz.T, hc)
            if bias is not None:
                db += dz.sum(0, dtype=torch.float32)
    return losses, dh, dw, db.to(bias.dtype) if grads and bias is not None else db


@custom_op("linear_cross_entropy")
def _linear_ce(h: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None,
               ignore_index: int, smoothing: float, softcap: float, reduce: int, grads: bool
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, d input, d weight, d bias); the gradients (for an upstream gradient of 1) only
    with `grads` and a reduction (else empty)."""
    if reduce == 2:  # over the rows not ignored
        scale = 1.0 / (target != ignore_index).sum().to(torch.float32)
    else:
        scale = torch.ones((), dtype=torch.float32, device=h.device)
    losses, dh, dw, db = _chunks(h, weight, target, bias, ignore_index, smoothing, softcap,
                                 scale, grads and reduce != 0)
    loss = losses if reduce == 0 else losses.sum() * scale if reduce == 2 else losses.sum()
    return loss.to(h.dtype), dh, dw, db


@_linear_ce.register_fake
def _(h: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None, ignore_index: int,
      smoothing: float, softcap: float, reduce: int, grads: bool
      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    made = grads and reduce != 0
    return (h.new_empty((h.shape[0],) if reduce == 0 else ()),
            h.new_empty(h.shape if made else _EMPTY),
            weight.new_empty(weight.shape if made else _EMPTY),
            h.new_empty(bias.shape if made and bias is not None else _EMPTY,
                        dtype=bias.dtype if bias is not None else h.dtype))


@custom_op("linear_cross_entropy_backward")
def _linear_ce_bwd(dloss: Tensor, h: Tensor, weight: Tensor, target: Tensor,
                   bias: Tensor | None, ignore_index: int, smoothing: float, softcap: float
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of reduction 'none': the chunks again, each row scaled by its dloss."""
    _, dh, dw, db = _chunks(h, weight, target, bias, ignore_index, smoothing, softcap,
                            dloss.to(torch.float32).view(-1, 1), True)
    return dh, dw, db


@_linear_ce_bwd.register_fake
def _(dloss: Tensor, h: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None,
      ignore_index: int, smoothing: float, softcap: float) -> tuple[Tensor, Tensor, Tensor]:
    return (h.new_empty(h.shape), weight.new_empty(weight.shape),
            bias.new_empty(bias.shape) if bias is not None else h.new_empty(_EMPTY))


def _setup(ctx, inputs, output):
    h, weight, target, bias, ignore_index, smoothing, softcap, reduce, _ = inputs
    ctx.reduce, ctx.has_bias = reduce, bias is not None
    ctx.args = ignore_index, smoothing, softcap
    if reduce == 0:  # nothing was made in the forward: keep what the chunks need
        ctx.save_for_backward(h, weight, target, bias)
    else:
        ctx.save_for_backward(*output[1:])


def _grad(ctx, dloss, *_unused):
    if ctx.reduce == 0:
        h, weight, target, bias = ctx.saved_tensors
        dh, dw, db = call(_linear_ce_bwd, dloss.contiguous(), h, weight, target, bias,
                          *ctx.args)
    else:  # made for an upstream gradient of 1 in the forward: scale them (in place when
        # eager, so d weight is not held twice; a traced graph keeps tensors immutable)
        dh, dw, db = ctx.saved_tensors
        if torch.compiler.is_compiling():
            dh, dw, db = (g * dloss.to(g.dtype) for g in (dh, dw, db))
        else:
            for g in (dh, dw, db):
                g.mul_(dloss.to(g.dtype))
    return dh, dw, None, db if ctx.has_bias else None, None, None, None, None, None


autograd(_linear_ce, _grad, _setup)


def linear_cross_entropy(input: Tensor, weight: Tensor, target: Tensor,
                         bias: Tensor | None = None, ignore_index: int = -100,
                         label_smoothing: float = 0.0, softcap: float | None = None,
                         reduction: str = "mean", check_targets: bool = True) -> Tensor:
    """`torch.nn.functional.cross_entropy(input @ weight.T + bias, target, ...)` without the
    logits in memory: input (..., H), weight (V, H), target (...) of class indices, bias (V,).
    `softcap` (Gemma 2's final_logit_softcapping) caps the logits as `softcap *
    tanh(logits / softcap)` first. The loss is in input's dtype. Memory beyond the gradients:
    one chunk of logits and its gradient in input's dtype (at most 2 x 256 MiB, or two
    copies of input where that is more; FUSILE_CE_CHUNK_MIB sets the 256)."""
    same_device("linear_cross_entropy", input, weight, bias)
    if input.dim() < 1 or weight.dim() != 2 or input.shape[-1] != weight.shape[1] \
            or target.shape != input.shape[:-1]:
        raise SignatureError(
            f"fusile.stdlib.linear_cross_entropy: expected input (..., H), weight (V, H) and "
            f"target (...), got {tuple(input.shape)}, {tuple(weight.shape)} and "
            f"{tuple(target.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise SignatureError(f"fusile.stdlib.linear_cross_entropy: bias must be "
                             f"({weight.shape[0]},), got {tuple(bias.shape)}")
    if target.dtype not in (torch.int64, torch.int32):
        raise SignatureError(f"fusile.stdlib.linear_cross_entropy: target must hold class "
                             f"indices (int64), got {target.dtype}")
    if reduction not in _REDUCE:
        raise SignatureError(f"fusile.stdlib.linear_cross_entropy: reduction must be 'mean', "
                             f"'sum' or 'none', got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise SignatureError(f"fusile.stdlib.linear_cross_entropy: label_smoothing must be in "
                             f"[0, 1], got {label_smoothing!r}")
    if softcap is not None and not softcap > 0.0:
        raise SignatureError(f"fusile.stdlib.linear_cross_entropy: softcap must be positive "
                             f"or None, got {softcap!r}")
    h, t = input.reshape(-1, input.shape[-1]), target.reshape(-1)
    grads = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (input, weight, bias))
    loss, *_ = apply(_linear_ce, h, weight, t, bias, int(ignore_index), float(label_smoothing),
                     float(softcap or 0.0), _REDUCE[reduction], grads)
    if check_targets:
        bad = ((t < 0) | (t >= weight.shape[0])) & (t != ignore_index)
        target_check(~bad.any(), weight.shape[0], t, int(ignore_index), "linear_cross_entropy")
    return loss.view(target.shape) if reduction == "none" else loss
