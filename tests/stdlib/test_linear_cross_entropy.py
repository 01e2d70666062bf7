"""stdlib.linear_cross_entropy against torch's F.cross_entropy(h @ w.T + b) in float64: loss and
every gradient, reductions, ignore_index, label smoothing, soft-capping, bias, odd sizes over
several chunks, torch.compile, and the errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fusile.stdlib as S
from fusile import config
from fusile.dsl.errors import SignatureError
from fusile.stdlib.linear_cross_entropy import chunk_rows
from tests.numerics import assert_close

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(autouse=True)
def _small_chunks():
    """Liger's chunk rule: these sizes then take several chunks (the default's 256 MiB holds
    any of them in one)."""
    with config.override(ce_chunk_mib=0):
        yield


def test_chunks_are_as_deep_as_memory_allows() -> None:
    """Up to 1024 rows (the d weight matmul's depth) within 256 MiB of logits; never fewer
    than Liger's rule; no more rows than there are (a power of two)."""
    with config.override(ce_chunk_mib=256):
        assert chunk_rows(8192, 4096, 128256) == 1024  # Liger's rule: 256
        assert chunk_rows(8192, 4096, 256000) == 512
        assert chunk_rows(8192, 4096, 128256, itemsize=4) == 512
        assert chunk_rows(300, 4096, 128256) == 512
        assert chunk_rows(8192, 64, 128256) == 1024  # Liger's rule: 64
        assert chunk_rows(8192, 8192, 4096) == 8192  # Liger's rule: a chunk of the input
    with config.override(ce_chunk_mib=1):
        assert chunk_rows(8192, 4096, 128256) == 256  # 4 rows fit: Liger's rule stands
    assert chunk_rows(8192, 4096, 128256) == 256


def reference(h, w, t, b=None, softcap=None, **kw):
    z = h @ w.T + (b if b is not None else 0)
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    return F.cross_entropy(z, t, **kw)


def _case(n, hidden, vocab, dtype, device, bias, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g).to(dtype)
    w = (torch.randn(vocab, hidden, generator=g) / hidden ** 0.5 * 3).to(dtype)
    b = torch.randn(vocab, generator=g).to(dtype) if bias else None
    t = torch.randint(0, vocab, (n,), generator=g)
    t[1::5] = -100
    move = [x.to(device) if x is not None else None for x in (h, w, b, t)]
    return move


def _check(n, hidden, vocab, dtype, device, reduction, smoothing, softcap, bias, seed=0):
    h, w, b, t = _case(n, hidden, vocab, dtype, device, bias, seed)
    leaves = [x.clone().requires_grad_() for x in (h, w, b) if x is not None]
    loss = S.linear_cross_entropy(leaves[0], leaves[1], t, leaves[2] if bias else None,
                                  reduction=reduction, label_smoothing=smoothing,
                                  softcap=softcap)
    dy = torch.randn(loss.shape, dtype=torch.float64).to(device)
    grads = torch.autograd.grad(loss, leaves, dy.to(loss.dtype))
    refs = [x.double().requires_grad_() for x in (h, w, b) if x is not None]
    want = reference(refs[0], refs[1], t, refs[2] if bias else None, softcap=softcap,
                     reduction=reduction, label_smoothing=smoothing)
    want_grads = torch.autograd.grad(want, refs, dy)
    assert loss.dtype == dtype and loss.shape == want.shape
    assert_close(loss, want.detach(), dtype, scale=2)
    for got, ref in zip(grads, want_grads, strict=True):
        assert got.dtype == dtype and got.shape == ref.shape
        assert_close(got, ref, dtype, scale=4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction,smoothing,softcap,bias", [
    ("mean", 0.0, None, False),
    ("sum", 0.1, 30.0, True),
    ("none", 0.0, 4.0, False),
    ("mean", 0.25, None, True),
    ("none", 0.1, None, True),
])
def test_against_torch(device, dtype, reduction, smoothing, softcap, bias) -> None:
    # 37 rows of 24 over 301 classes: 10 chunks of 4 rows, the last one short
    assert chunk_rows(37, 24, 301) == 4
    _check(37, 24, 301, dtype, device, reduction, smoothing, softcap, bias)


@pytest.mark.gpu
def test_large_vocab_on_gpu() -> None:
    """A real LM head's proportions (vocab 16x hidden) in bf16: several chunks, looped rows."""
    _check(1031, 256, 4099, torch.bfloat16, "cuda", "mean", 0.0, None, False)


def test_leading_dims_and_loss_only() -> None:
    h, w, _, t = _case(12, 8, 50, torch.float32, "cpu", False, 1)
    got = S.linear_cross_entropy(h.view(3, 4, 8), w, t.view(3, 4), reduction="none")
    assert got.shape == (3, 4)
    assert_close(got.view(-1), reference(h.double(), w.double(), t, reduction="none"),
                 torch.float32)
    with torch.no_grad():  # no gradient wanted: the loss alone
        assert_close(S.linear_cross_entropy(h, w, t), reference(h.double(), w.double(), t),
                     torch.float32)


def test_only_the_weight_needs_a_gradient() -> None:
    h, w, _, t = _case(9, 8, 21, torch.float32, "cpu", False, 2)
    wg = w.clone().requires_grad_()
    (dw,) = torch.autograd.grad(S.linear_cross_entropy(h, wg, t), [wg])
    wr = w.double().requires_grad_()
    (want,) = torch.autograd.grad(reference(h.double(), wr, t), [wr])
    assert_close(dw, want, torch.float32, scale=4)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device) -> None:
    torch._dynamo.reset()
    h, w, b, t = _case(19, 16, 70, torch.float32, device, True, 3)
    leaves = [x.clone().requires_grad_() for x in (h, w, b)]

    def step(h, w, b, t):
        return S.linear_cross_entropy(h, w, t, b, label_smoothing=0.1) * 2.0

    loss = torch.compile(step, fullgraph=True)(*leaves, t)
    grads = torch.autograd.grad(loss, leaves)
    refs = [x.double().requires_grad_() for x in (h, w, b)]
    want = reference(refs[0], refs[1], t, refs[2], label_smoothing=0.1) * 2.0
    assert_close(loss, want.detach(), torch.float32, scale=2)
    for got, ref in zip(grads, torch.autograd.grad(want, refs), strict=True):
        assert_close(got, ref, torch.float32, scale=4)


@pytest.mark.parametrize("call,message", [
    (lambda h, w, t: S.linear_cross_entropy(h, w.T, t), r"weight \(V, H\)"),
    (lambda h, w, t: S.linear_cross_entropy(h, w, t[:-1]), r"target \(\.\.\.\)"),
    (lambda h, w, t: S.linear_cross_entropy(h, w, t.float()), "class indices"),
    (lambda h, w, t: S.linear_cross_entropy(h, w, t, reduction="avg"), "reduction"),
    (lambda h, w, t: S.linear_cross_entropy(h, w, t, softcap=0.0), "softcap"),
    (lambda h, w, t: S.linear_cross_entropy(h, w, t, torch.randn(3)), "bias must be"),
    (lambda h, w, t: S.linear_cross_entropy(h, w, torch.full_like(t, 11)),
     r"outside \[0, 11\)"),
])
def test_errors(call, message) -> None:
    h, w, _, t = _case(5, 4, 11, torch.float32, "cpu", False, 4)
    with pytest.raises(SignatureError, match=message):
        call(h, w, t)


def test_no_logits_larger_than_a_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The (tokens x vocab) logits are never made: every logits tile the fused kernel reads
    is one chunk of rows (about the input's size), and the chunks cover every row once."""
    import importlib

    lce = importlib.import_module("fusile.stdlib.linear_cross_entropy")
    seen = []
    kernel = lce.K.linear_cross_entropy_rows

    class Spy:
        def __call__(self, z, *args):
            seen.append(tuple(z.shape))
            return kernel(z, *args)

    monkeypatch.setattr(lce.K, "linear_cross_entropy_rows", Spy())
    h, w, _, t = _case(100, 16, 130, torch.float32, "cpu", False, 5)
    step = chunk_rows(100, 16, 130)
    assert step < 100
    hg = h.clone().requires_grad_()
    torch.autograd.grad(S.linear_cross_entropy(hg, w, t), [hg])
    assert all(rows <= step and vocab == 130 for rows, vocab in seen)
    assert sum(rows for rows, _ in seen) == 100  # each row once: the gradient came with it
