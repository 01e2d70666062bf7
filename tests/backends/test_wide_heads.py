"""Head dims wider than a flash kernel holds on chip (Target.max_head_dim: 256 on a GPU) run
the signature's plain plan, the scores through HBM, instead of a flash kernel that cannot
launch (a linear cross-entropy's backward at hidden size 2048 needed 320 KiB of shared memory
on an H100). On the interpreter the limit is set with FUSILE_MAX_HEAD_DIM to take the same
path; the GPU tests use the real one."""

from __future__ import annotations

import pytest
import torch

import fusile
from fusile import config
from fusile.backends import run, targets
from fusile.stdlib.attention import attention
from tests.numerics import assert_close

LCE = fusile.from_source('''
def lce_bwd(dloss, h, w, labels, lse):
    logits = h @ w.T
    t = labels[:, None]
    p = exp(logits - lse)
    g = (p - where(index(logits, -1) == t, 1.0, 0.0)) * dloss
    return g @ w, g.T @ h
''')


def _lce(n: int, d: int, v: int, device: str, dtype: torch.dtype) -> tuple:
    h = torch.randn(n, d, device=device, dtype=dtype)
    w = torch.randn(v, d, device=device, dtype=dtype) / d**0.5
    labels = torch.randint(0, v, (n,), device=device)
    dloss = torch.randn(n, 1, device=device)
    lse = torch.logsumexp((h.double() @ w.double().T), -1, keepdim=True).float()
    return dloss, h, w, labels, lse


def _lce_reference(dloss: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
                   labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hh, ww = h.double().requires_grad_(), w.double().requires_grad_()
    loss = torch.nn.functional.cross_entropy(hh @ ww.T, labels, reduction="none")
    loss.backward(dloss.double().view(-1))
    return hh.grad, ww.grad


def _plan_kinds(fn: object, args: tuple) -> list[str]:
    compiled = fn.compiled(*args)  # type: ignore[attr-defined]
    runtime = compiled.runtime_args(list(args))
    return [k.kind for k in run.program_for(compiled, runtime).plan_for(runtime).kernels]


def test_the_limit_is_the_targets_and_the_knob_moves_it() -> None:
    assert targets.get("h100").max_head_dim == targets.get("mi300x").max_head_dim == 256
    assert targets.get("cpu").max_head_dim == 0  # the interpreter holds anything
    with config.override(max_head_dim=64):
        assert targets.get("h100").max_head_dim == targets.get("cpu").max_head_dim == 64


@pytest.mark.parametrize("d", [16, 48])
def test_attention_wider_than_the_limit_runs_the_plain_plan(
        d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from fusile.backends.triton.runtime import TritonProgram

    plain: list[str] = []
    made = TritonProgram.plain

    def spy(self: TritonProgram) -> TritonProgram:
        out = made(self)
        plain.append(",".join(k.kind for k in out.plan.kernels))
        return out

    monkeypatch.setattr(TritonProgram, "plain", spy)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 33, d, requires_grad=True) for _ in range(3))
    with config.override(max_head_dim=32):
        out = attention(q, k, v, causal=True)
        do = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), do)
    # forward and backward each ran their plain plan past the limit, and no flash kernel
    assert len(plain) == (2 if d > 32 else 0) and "attention" not in "".join(plain), plain
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    scores = (ref_in[0] @ ref_in[1].transpose(-1, -2)) / d**0.5
    keep = torch.ones(33, 33, dtype=torch.bool).tril()
    ref = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1) @ ref_in[2]
    assert_close(out, ref, torch.float32)
    for got, want in zip(grads, torch.autograd.grad(ref, ref_in, do.double()), strict=True):
        assert_close(got, want, torch.float32)


def test_a_linear_cross_entropy_backward_falls_back_past_the_limit() -> None:
    """dh and dW of cross_entropy(h @ w.T): two flash backward kernels while the hidden size
    fits, contraction and row kernels past it; the same numbers either way."""
    torch.manual_seed(0)
    args = _lce(40, 48, 70, "cpu", torch.float32)
    want = _lce_reference(args[0], args[1], args[2], args[3])
    for limit, flash in ((64, True), (32, False)):
        with config.override(max_head_dim=limit):
            kinds = _plan_kinds(LCE, args)
            assert ("attention-grad" in kinds) == flash, kinds
            got = LCE(*args)
        for g, w in zip(got, want, strict=True):
            assert_close(g, w, torch.float32)


@pytest.mark.parametrize("d", [128, 2048])
def test_ahead_of_time_compiles_what_the_runtime_would_run(d: int) -> None:
    """compile_for with a head dim past the target's limit compiles the plain plan (at 2048
    the flash backward asked for 320 KiB of shared memory on an H100, 227 usable)."""
    from fusile import bf16, f32, i64
    from fusile.backends.triton.aot import compile_for

    compiled = LCE.compiled(dloss=f32["N", 1], h=bf16["N", d], w=bf16["V", d],
                            labels=i64["N"], lse=f32["N", 1])
    arts = compile_for(compiled, targets.get("h100"), sizes={"N": 8192, "V": 32768})
    kinds = [k.kind for k in arts.kernels]
    assert kinds == (["attention-grad"] * 2 if d <= 256 else ["contraction"] * 3), kinds
    assert all(k.shared_bytes <= 227 * 1024 for k in arts.kernels), arts.kernels


def test_an_artifact_past_the_shared_memory_says_it_cannot_launch() -> None:
    from fusile.backends.triton.aot_build import KernelArtifact

    def art(shared: int) -> KernelArtifact:
        return KernelArtifact("k", "attention-grad", {}, 255, 0, shared, 4, (64, 16), "g",
                              smem_limit=227 * 1024)

    assert art(227 * 1024).launchable and "cannot launch" not in art(227 * 1024).summary()
    big = art(320 * 1024)
    assert not big.launchable and "over the target's 232448 B: it cannot launch" in big.summary()


def test_explain_shows_the_plan_the_target_runs() -> None:
    from fusile import bf16, f32, i64

    def kinds(d: int, target: str) -> list[str]:
        ex = LCE.explain(dloss=f32["N", 1], h=bf16["N", d], w=bf16["V", d], labels=i64["N"],
                         lse=f32["N", 1], sizes={"N": 4096, "V": 32768}, target=target)
        return [k.kind for k in ex.kernels]

    assert kinds(256, "h100") == ["attention-grad"] * 2
    assert kinds(2048, "h100") == kinds(2048, "mi300x") == ["contraction"] * 3


@pytest.mark.gpu
def test_wide_hidden_linear_cross_entropy_backward_on_the_gpu() -> None:
    """At hidden size 2048 the flash backward cannot launch on a GPU (shared memory): the
    plain plan runs, and its gradients are right."""
    torch.manual_seed(0)
    args = _lce(256, 2048, 1000, "cuda", torch.bfloat16)
    assert "attention-grad" not in _plan_kinds(LCE, args)
    for g, w in zip(LCE(*args), _lce_reference(*args[:4]), strict=True):
        assert_close(g, w, torch.bfloat16)


@pytest.mark.gpu
def test_attention_at_head_dim_512_on_the_gpu() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 100, 512, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    out = attention(q, k, v, causal=True)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    scores = (ref_in[0] @ ref_in[1].transpose(-1, -2)) / 512**0.5
    keep = torch.ones(100, 100, dtype=torch.bool, device="cuda").tril()
    ref = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1) @ ref_in[2]
    assert_close(out, ref, torch.bfloat16)
    for got, want in zip(grads, torch.autograd.grad(ref, ref_in, do.double()), strict=True):
        assert_close(got, want, torch.bfloat16, scale=1.5)
