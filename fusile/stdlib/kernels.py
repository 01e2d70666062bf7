"""The standard library's math, forward and backward, written in fusile's DSL.

Norms take 2-D inputs (rows x features; the torch wrappers flatten leading dims) and return the
per-row statistics the backward needs (rstd, mean) in the compute dtype (float32 for 16-bit
inputs), so nothing larger is saved and nothing is rounded to bf16. Gradients
follow from y = f(x) by hand; each backward is one fused row kernel for the input gradient and
one column reduction for the parameter gradients.
"""

from __future__ import annotations

import math

from fusile import (
    astype,
    erf,
    exp,
    fused,
    i64,
    index,
    log_softmax,
    logsumexp,
    mean,
    rsqrt,
    sigmoid,
    size,
    softmax,
    sum,
    tanh,
    where,
)

SQRT_HALF = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
K_TANH = math.sqrt(2.0 / math.pi)

# ----------------------------------------------------------------------------- softmax


@fused
def softmax_fwd(x, dim: int = -1):
    return softmax(x, axis=dim)


@fused
def softmax_bwd(dy, y, dim: int = -1):
    return astype(y * (dy - sum(dy * y, axis=dim, keepdims=True)), y)


@fused
def log_softmax_fwd(x, dim: int = -1):
    return log_softmax(x, axis=dim)


@fused
def log_softmax_bwd(dy, y, dim: int = -1):
    return astype(dy - exp(y) * sum(dy, axis=dim, keepdims=True), y)


# ----------------------------------------------------------------------------- RMS norm


@fused
def rms_norm_fwd(x, weight, eps: float):
    rstd = rsqrt(mean(x * x, axis=-1, keepdims=True) + eps)
    return x * rstd * weight, astype(rstd, "compute")


@fused
def rms_norm_bwd(dy, x, weight, rstd):
    g = dy * weight
    dx = rstd * (g - x * (rstd * rstd) * mean(g * x, axis=-1, keepdims=True))
    return astype(dx, x), astype(sum(dy * x * rstd, axis=0), weight)


@fused
def add_rms_norm_fwd(x, residual, weight, eps: float):
    h = x + residual
    y, rstd = rms_norm_fwd(h, weight, eps)
    return y, h, rstd


@fused
def add_rms_norm_bwd(dy, dh, h, weight, rstd):
    dx, dw = rms_norm_bwd(dy, h, weight, rstd)
    return astype(dx + dh, h), dw


# ----------------------------------------------------------------------------- layer norm


@fused
def layer_norm_fwd(x, weight, bias, eps: float):
    mu = mean(x, axis=-1, keepdims=True)
    xc = x - mu
    rstd = rsqrt(mean(xc * xc, axis=-1, keepdims=True) + eps)
    return xc * rstd * weight + bias, astype(mu, "compute"), astype(rstd, "compute")


@fused
def layer_norm_bwd(dy, x, weight, mu, rstd):
    xhat = (x - mu) * rstd
    g = dy * weight
    dx = rstd * (g - mean(g, axis=-1, keepdims=True) -
                 xhat * mean(g * xhat, axis=-1, keepdims=True))
    return astype(dx, x), astype(sum(dy * xhat, axis=0), weight), astype(sum(dy, axis=0), weight)


@fused
def add_layer_norm_fwd(x, residual, weight, bias, eps: float):
    h = x + residual
    y, mu, rstd = layer_norm_fwd(h, weight, bias, eps)
    return y, h, mu, rstd


@fused
def add_layer_norm_bwd(dy, dh, h, weight, mu, rstd):
    dx, dw, db = layer_norm_bwd(dy, h, weight, mu, rstd)
    return astype(dx + dh, h), dw, db


# ----------------------------------------------------------------------------- activations


@fused
def gelu_erf(x):
    return 0.5 * x * (1.0 + erf(x * SQRT_HALF))


@fused
def gelu_erf_grad(x):
    return 0.5 * (1.0 + erf(x * SQRT_HALF)) + x * exp(-0.5 * x * x) * INV_SQRT_2PI


@fused
def gelu_tanh(x):
    return 0.5 * x * (1.0 + tanh(K_TANH * (x + 0.044715 * x * x * x)))


@fused
def gelu_tanh_grad(x):
    t = tanh(K_TANH * (x + 0.044715 * x * x * x))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K_TANH * (1.0 + 3.0 * 0.044715 * x * x)


@fused
def silu_fwd(x):
    return x * sigmoid(x)


@fused
def silu_grad(x):
    s = sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


@fused
def gelu_bwd(dy, x):
    return astype(dy * gelu_erf_grad(x), x)


@fused
def gelu_tanh_bwd(dy, x):
    return astype(dy * gelu_tanh_grad(x), x)


@fused
def silu_bwd(dy, x):
    return astype(dy * silu_grad(x), x)


@fused
def swiglu_fwd(a, b):
    return silu_fwd(a) * b


@fused
def swiglu_bwd(dy, a, b):
    return astype(dy * b * silu_grad(a), a), astype(dy * silu_fwd(a), b)


@fused
def geglu_fwd(a, b):
    return gelu_erf(a) * b


@fused
def geglu_bwd(dy, a, b):
    return astype(dy * b * gelu_erf_grad(a), a), astype(dy * gelu_erf(a), b)


@fused
def geglu_tanh_fwd(a, b):
    return gelu_tanh(a) * b


@fused
def geglu_tanh_bwd(dy, a, b):
    return astype(dy * b * gelu_tanh_grad(a), a), astype(dy * gelu_tanh(a), b)


# ----------------------------------------------------------------------------- cross-entropy


@fused
def cross_entropy_fwd(logits, target, ignore_index: int, smoothing: float, reduce: int):
    """The loss in the logits' dtype (reduce 0: per row; 1: summed; 2: the mean over the rows
    not ignored), each row's log-sum-exp, the count of rows not ignored, and whether every
    target is a class or ignore_index: one call, so a training step's loss costs one
    dispatch, not a dozen small torch ops. Logits stay in their dtype, read in tiles."""
    t = target[:, None]
    lse = logsumexp(logits, axis=-1, keepdims=True)
    picked = sum(where(index(logits, -1) == t, logits, 0.0), axis=-1, keepdims=True)
    nll = lse - picked
    smooth = lse - mean(logits, axis=-1, keepdims=True)
    kept = t != ignore_index
    rows = astype(where(kept, (1.0 - smoothing) * nll + smoothing * smooth, 0.0), "compute")
    count = sum(astype(kept, i64))
    bad = sum(astype(((t < 0) | (t >= size(logits, -1))) & kept, i64))
    total = sum(rows)
    loss = astype(rows if reduce == 0 else total if reduce == 1 else total / count, logits)
    return loss, astype(lse, "compute"), count, bad == 0


# ----------------------------------------------------------------------------- linear CE


@fused
def linear_cross_entropy_rows(z, target, scale, ignore_index: int, smoothing: float,
                              softcap: float, capped: int):
    """One chunk of a linear cross-entropy (stdlib/linear_cross_entropy.py): the logits z
    (rows, V) of the chunk, soft-capped (`cap * tanh(z / cap)`, Gemma 2) when `capped`, to
    each row's loss (float32, 0 where ignored) and dloss/dz times `scale` (a 0-d or per-row
    float32 tensor: 1/count for a mean, the upstream gradient for 'none'), in z's dtype. The
    gradient comes with the loss, so the logits are read in this call and never again."""
    t = target[:, None]
    c = softcap * tanh(z / softcap) if capped else z
    lse = logsumexp(c, axis=-1, keepdims=True)
    hit = index(z, -1) == t
    picked = sum(where(hit, c, 0.0), axis=-1, keepdims=True)
    kept = t != ignore_index
    smooth = lse - mean(c, axis=-1, keepdims=True)
    loss = where(kept, (1.0 - smoothing) * (lse - picked) + smoothing * smooth, 0.0)
    g = exp(c - lse) - where(hit, 1.0 - smoothing, 0.0) - smoothing / size(z, -1)
    g = g * (1.0 - (c / softcap) * (c / softcap)) if capped else g
    return astype(loss, "compute"), astype(where(kept, g * scale, 0.0), z)
