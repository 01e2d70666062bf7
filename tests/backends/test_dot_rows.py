"""Contractions whose rows are reduced on chip (lowering/dot_rows.py, codegen_dot_rows.py): a
linear layer's cross-entropy and log-sum-exps of products computed without the product in
HBM, against torch in float64, through the one-kernel path and the split-columns path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusile import bf16, config, fused, i64, index
from fusile.backends import run
from tests.numerics import assert_close


@fused
def lce_mean(h, w, t):
    return F.cross_entropy(h @ w.T, t)


@fused
def lce_bias_none(h, w, b, t):
    return F.cross_entropy(h @ w.T + b, t, reduction="none", ignore_index=3)


@fused
def lce_capped(h, w, t):
    """Gemma 2's soft-capping, label smoothing and a z-loss, spelled as formulas."""
    z = 3.0 * torch.tanh((h @ w.T) / 3.0)
    lse = torch.logsumexp(z, -1)
    smooth = lse - z.mean(-1)
    return 0.9 * F.cross_entropy(z, t, reduction="none") + 0.1 * smooth + 1e-2 * lse * lse


@fused
def batched_lse(q, k):
    return torch.logsumexp(q @ k.mT, -1)


@fused
def masked_lse(h, w, t):
    """Columns past each row's target masked: a row whose target is 0 sees none (-inf)."""
    z = h @ w.T
    return torch.logsumexp(torch.where(index(z, 1) < t[:, None], z, float("-inf")), -1)


@fused
def by_hand_lse(h, w, t):
    """Shifted by the max itself (no guard): a row with no column left is NaN, as torch."""
    z = torch.where(index(h @ w.T, 1) < t[:, None], h @ w.T, float("-inf"))
    m = z.amax(-1, keepdim=True)
    return torch.log(torch.exp(z - m).sum(-1)) + z.amax(-1)


def _lce_args(n: int, d: int, v: int, dtype: torch.dtype, device: str = "cpu") -> tuple:
    h = torch.randn(n, d, device=device).to(dtype)
    w = (torch.randn(v, d, device=device) / d**0.5).to(dtype)
    t = torch.randint(0, v, (n,), device=device)
    t[::7] = -100  # ignored rows
    return h, w, t


def _ref(name: str, args: tuple) -> torch.Tensor:
    a = [x.double() if x.is_floating_point() else x for x in args]
    if name == "lce_mean":
        h, w, t = a
        return F.cross_entropy(h @ w.T, t)
    if name == "lce_bias_none":
        h, w, b, t = a
        return F.cross_entropy(h @ w.T + b, t, reduction="none", ignore_index=3)
    if name == "lce_capped":
        h, w, t = a
        z = 3.0 * torch.tanh((h @ w.T) / 3.0)
        lse = torch.logsumexp(z, -1)
        nll = torch.where(t == -100, 0.0, lse - z.gather(1, t.clamp(min=0)[:, None])[:, 0])
        return 0.9 * nll + 0.1 * (lse - z.mean(-1)) + 1e-2 * lse * lse
    if name == "batched_lse":
        q, k = a
        return torch.logsumexp(q @ k.mT, -1)
    h, w, t = a
    z = h @ w.T
    cols = torch.arange(z.shape[1])[None, :]
    z = torch.where(cols < t[:, None], z, float("-inf"))
    if name == "by_hand_lse":
        m = z.amax(-1, keepdim=True)
        return torch.log(torch.exp(z - m).sum(-1)) + m[:, 0]
    return torch.logsumexp(z, -1)


def _cases(dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    h, w, t = _lce_args(37, 40, 300, dtype)
    b = torch.randn(300).to(dtype)
    t_bias = t.clone()
    t_bias[t_bias == -100] = 3
    masked_t = torch.randint(0, 300, (37,))
    masked_t[:3] = 0  # rows with no column left
    return {
        "lce_mean": (lce_mean, (h, w, t)),
        "lce_bias_none": (lce_bias_none, (h, w, b, t_bias)),
        "lce_capped": (lce_capped, (h, w, t)),
        "batched_lse": (batched_lse, (torch.randn(3, 9, 40).to(dtype),
                                      torch.randn(3, 70, 40).to(dtype))),
        "masked_lse": (masked_lse, (h, w, masked_t)),
        "by_hand_lse": (by_hand_lse, (h, w, masked_t)),
    }


def _kinds(fn: object, args: tuple) -> list[str]:
    """The kernels the Triton interpreter runs for these arguments."""
    compiled = fn.compiled(*args)  # type: ignore[attr-defined]
    runtime = compiled.runtime_args(list(args))
    with config.override(target="cpu"):
        program = run.program_for(compiled, runtime)
    return [k.kind for k in program.plan_for(runtime).kernels]


@pytest.mark.parametrize("splits", [1, 3], ids=["one-kernel", "split-columns"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(_cases(torch.float32)))
def test_matches_float64_torch(name: str, dtype: torch.dtype, splits: int) -> None:
    fn, args = _cases(dtype)[name]
    assert "dot-rows" in _kinds(fn, args)
    with config.override(dot_rows_splits=splits, target="cpu"):  # the Triton interpreter
        out = fn(*args)
    assert out.dtype == dtype
    assert_close(out, _ref(name, args), dtype)


def test_no_product_reaches_memory() -> None:
    """At Llama 3's vocabulary: the kernel reads h and w once and writes three floats a row;
    the loss's mean is a second, tiny kernel."""
    n, d, v = 8192, 4096, 128256
    ex = lce_mean.explain(h=bf16["N", d], w=bf16["V", d], t=i64["N"], sizes={"N": n, "V": v},
                          target="h100")
    assert [k.kind for k in ex.kernels] == ["dot-rows", "reduction"]
    first = ex.kernels[0]
    assert first.read_bytes == pytest.approx(2 * (n * d + v * d) + 8 * n, rel=1e-3)
    assert first.write_bytes <= 3 * 4 * n  # per row: a max, a sum, the target's logit


@pytest.mark.parametrize("splits", [0, 3])
def test_no_columns_at_all(splits: int) -> None:
    """An empty vocabulary: every row's log-sum-exp is -inf, as torch's (a split plan once
    divided by its empty chunk)."""
    @fused
    def lse(h, w):
        return torch.logsumexp(h @ w.T, -1)

    h, w = torch.randn(5, 8), torch.randn(0, 8)
    assert "dot-rows" in _kinds(lse, (h, w))
    with config.override(dot_rows_splits=splits, target="cpu"):
        assert torch.equal(lse(h, w), torch.full((5,), float("-inf")))


def test_a_product_read_elementwise_stays_a_contraction() -> None:
    """softmax(h @ w.T) writes every column: the product is a result, not reduced away."""
    @fused
    def probs(h, w):
        return torch.softmax(h @ w.T, -1)

    h, w = torch.randn(9, 16), torch.randn(50, 16)
    assert "dot-rows" not in _kinds(probs, (h, w))
    with config.override(target="cpu"):
        assert_close(probs(h, w), torch.softmax(h.double() @ w.double().T, -1), torch.float32)


def test_gradients_match_torch() -> None:
    """The derived backward of a fused linear cross-entropy (the forward a dot-rows kernel)."""
    h, w, t = _lce_args(23, 32, 200, torch.float32)
    h.requires_grad_()
    w.requires_grad_()
    with config.override(target="cpu"):
        dh, dw = torch.autograd.grad(lce_mean(h, w, t), (h, w))
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    want = torch.autograd.grad(F.cross_entropy(h64 @ w64.T, t), (h64, w64))
    assert_close(dh, want[0], torch.float32)
    assert_close(dw, want[1], torch.float32)


@pytest.mark.parametrize("target", ["h100", "mi300x"])
def test_ahead_of_time_builds_without_spills(target: str) -> None:
    arts = lce_mean.compile(target, h=bf16["N", 4096], w=bf16["V", 4096], t=i64["N"])
    rows = [k for k in arts.kernels if k.kind == "dot-rows"]
    assert len(rows) == 3  # the kernel, its split variant and the combine
    assert all(k.spills == 0 and k.launchable for k in rows), [k.summary() for k in rows]


@pytest.mark.gpu
@pytest.mark.parametrize("n", [64, 4096], ids=["few-rows-split", "many-rows"])
def test_on_the_gpu(n: int) -> None:
    h, w, t = _lce_args(n, 1024, 32000, torch.bfloat16, "cuda")
    for _ in range(2):  # the second call replays the first one's launches
        assert_close(lce_mean(h, w, t), _ref("lce_mean", (h, w, t)), torch.bfloat16)
    assert "dot-rows" in _kinds(lce_mean, (h, w, t))
