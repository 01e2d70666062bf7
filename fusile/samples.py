"""Sample DSL programs with float64 torch references: the demo, the tests and the benchmarks
use them. Each `NAME` has a `NAME_ref` computing the same thing with torch in float64."""

from __future__ import annotations

import math

import torch

from fusile import (
    astype,
    erf,
    exp,
    fused,
    index,
    log,
    logsumexp,
    max,
    maximum,
    mean,
    rsqrt,
    sigmoid,
    softmax,
    sqrt,
    sum,
    tanh,
    var,
    where,
)


@fused
def layer_norm(x, weight, bias, eps: float = 1e-5):
    mu = mean(x, axis=-1, keepdims=True)
    xc = x - mu
    rstd = rsqrt(mean(xc * xc, axis=-1, keepdims=True) + eps)
    return xc * rstd * weight + bias


def layer_norm_ref(x, weight, bias, eps=1e-5):
    return torch.nn.functional.layer_norm(x.double(), x.shape[-1:], weight.double(),
                                          bias.double(), eps)


@fused
def rms_norm(x, weight, eps: float = 1e-6):
    return x * rsqrt(mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rms_norm_ref(x, weight, eps=1e-6):
    x = x.double()
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * weight.double()


@fused
def add_rms_norm(x, residual, weight, eps: float = 1e-6):
    h = x + residual
    y = h * rsqrt(mean(h * h, axis=-1, keepdims=True) + eps) * weight
    return y, h


def add_rms_norm_ref(x, residual, weight, eps=1e-6):
    h = x.double() + residual.double()
    return rms_norm_ref(h, weight, eps), h


@fused
def softmax_last(x):
    return softmax(x, axis=-1)


def softmax_ref(x):
    return torch.softmax(x.double(), -1)


@fused
def softmax_by_hand(x):
    e = exp(x - max(x, axis=-1, keepdims=True))
    return e / sum(e, axis=-1, keepdims=True)


@fused
def log_softmax_last(x):
    m = max(x, axis=-1, keepdims=True)
    return x - m - log(sum(exp(x - m), axis=-1, keepdims=True))


def log_softmax_ref(x):
    return torch.log_softmax(x.double(), -1)


@fused
def lse(x):
    return logsumexp(x, axis=-1)


def lse_ref(x):
    return torch.logsumexp(x.double(), -1)


@fused
def gelu_bias(x, b):
    h = x + b
    return 0.5 * h * (1.0 + erf(h * 0.7071067811865476))


def gelu_bias_ref(x, b):
    return torch.nn.functional.gelu(x.double() + b.double())


@fused
def gelu_tanh(x):
    return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


def gelu_tanh_ref(x):
    return torch.nn.functional.gelu(x.double(), approximate="tanh")


@fused
def swiglu(a, b):
    return a * sigmoid(a) * b


def swiglu_ref(a, b):
    return torch.nn.functional.silu(a.double()) * b.double()


@fused
def colsum_scale(x):
    return x / sqrt(sum(x * x, axis=0, keepdims=True) + 1.0)


def colsum_scale_ref(x):
    x = x.double()
    return x / torch.sqrt((x * x).sum(0, keepdim=True) + 1.0)


@fused
def linear_bias(x, w, b):
    return x @ w + b


def linear_bias_ref(x, w, b):
    return x.double() @ w.double() + b.double()


@fused
def linear_t_gelu(x, w, b):
    h = x @ w.T + b
    return 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))


def linear_t_gelu_ref(x, w, b):
    return torch.nn.functional.gelu(x.double() @ w.double().T + b.double())


@fused
def causal_scores(s):
    i = index(s, -2)
    j = index(s, -1)
    return softmax(where(j <= i, s, -math.inf), axis=-1)


def causal_scores_ref(s):
    n, m = s.shape[-2:]
    mask = torch.arange(m)[None, :] <= torch.arange(n)[:, None]
    return torch.softmax(s.double().masked_fill(~mask, -math.inf), -1)


@fused
def variance(x):
    return var(x, axis=1), var(x, axis=(0, 1), keepdims=True, correction=1)


def variance_ref(x):
    x = x.double()
    return x.var(1, unbiased=False), x.var((0, 1), keepdim=True, unbiased=True)


@fused
def relu_sq_bf16(x):
    r = maximum(x, 0.0)
    return astype(r * r, "bf16")


def relu_sq_bf16_ref(x):
    return torch.relu(x.double()) ** 2


@fused
def attention_plain(q, k, v, scale: float = 0.125):
    return softmax((q @ k.T) * scale, axis=-1) @ v


def attention_plain_ref(q, k, v, scale=0.125):
    return torch.softmax(q.double() @ k.double().transpose(-1, -2) * scale, -1) @ v.double()


def rnd(shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
        device: str = "cpu") -> torch.Tensor:
    return torch.randn(shape, device=device).to(dtype)


def cases(m: int, n: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> dict:
    """name -> (program, reference, arguments) for a rows-by-columns problem size."""

    def r(*shape: int) -> torch.Tensor:
        return rnd(shape, dtype, device)

    return {
        "layer_norm": (layer_norm, layer_norm_ref, (r(m, n), r(n), r(n))),
        "rms_norm": (rms_norm, rms_norm_ref, (r(m, n), r(n))),
        "add_rms_norm": (add_rms_norm, add_rms_norm_ref, (r(m, n), r(m, n), r(n))),
        "softmax": (softmax_last, softmax_ref, (r(m, n),)),
        "log_softmax": (log_softmax_last, log_softmax_ref, (r(m, n),)),
        "logsumexp": (lse, lse_ref, (r(m, n),)),
        "gelu_bias": (gelu_bias, gelu_bias_ref, (r(m, n), r(n))),
        "swiglu": (swiglu, swiglu_ref, (r(m, n), r(m, n))),
        "colsum_scale": (colsum_scale, colsum_scale_ref, (r(m, n),)),
    }
