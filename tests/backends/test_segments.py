"""Independent pointwise kernels in one launch (kinds/segments.py): which kernels are joined,
that each still computes its own elements (against torch in float64), the knob that keeps
them apart, and the joined kernel's cross-compilation."""

from __future__ import annotations

import pytest
import torch

from fusile import bf16, config
from fusile.backends.triton.kinds import kind_of
from fusile.stdlib.rope import apply_rotary_pos_emb, rope_halves_qk
from tests.kernels import kernel_sources as _kernels
from tests.kernels import program as _fn
from tests.kernels import rand as _rand
from tests.numerics import assert_close

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


THREE = "def f(a, b, c):\n    return exp(a), b * 2.0, c + 1.0\n"
# the second kernel reads y, which the first writes: they must stay two launches
CHAINED = "def f(x):\n    y = exp(x) * 2.0\n    return y, y.T + y\n"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sizes", [((3, 5), (7,), (2, 3, 4)), ((70, 33), (0,), (1, 3, 1500))])
def test_unrelated_outputs_run_in_one_launch(device: str, sizes: tuple) -> None:
    """Three outputs of unrelated shapes (one of them empty): one kernel of three segments,
    each writing its own output."""
    fn = _fn(THREE)
    a, b, c = (_rand(*s, device=device) for s in sizes)
    (ks,) = _kernels(fn, a, b, c)
    assert kind_of(ks).name == "segments" and len(ks.segments or []) == 3
    for got, want in zip(fn(a, b, c), (a.double().exp(), b.double() * 2, c.double() + 1),
                         strict=True):
        assert_close(got, want, torch.float32)


def test_a_kernel_that_reads_another_ones_result_is_not_joined() -> None:
    fn = _fn(CHAINED)
    x = _rand(6, 6)
    names = [kind_of(k).name for k in _kernels(fn, x)]
    assert "segments" not in names and len(names) == 2
    y, yt = fn(x)
    want = x.double().exp() * 2
    assert_close(y, want, torch.float32)
    assert_close(yt, want.T + want, torch.float32)


def test_the_knob_launches_each_kernel_on_its_own() -> None:
    a, b, c = _rand(3, 5), _rand(7), _rand(2, 3, 4)
    fn = _fn(THREE)
    assert [kind_of(k).name for k in _kernels(fn, a, b, c)] == ["segments"]
    assert_close(fn(a, b, c)[1], b.double() * 2, torch.float32)
    with config.override(horizontal=False):  # set between calls: it takes effect
        assert [kind_of(k).name for k in _kernels(fn, a, b, c)] == ["rows"] * 3
        got = fn(a, b, c)
    assert_close(got[1], b.double() * 2, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_rope_q_and_k_in_one_launch(device: str) -> None:
    """Hugging Face's rope of q (5 heads) and k (2 heads) at odd sizes, forward and backward,
    each one launch, against torch's rotate-half formula in float64."""
    q = _rand(2, 5, 7, 6, device=device).requires_grad_()
    k = _rand(2, 2, 7, 6, device=device).requires_grad_()
    ang = _rand(2, 7, 6, device=device)
    cos, sin = ang.cos(), ang.sin()
    yq, yk = apply_rotary_pos_emb(q, k, cos, sin)
    dq, dk = _rand(*yq.shape, device=device), _rand(*yk.shape, device=device)
    gq, gk = torch.autograd.grad((yq, yk), (q, k), (dq, dk))

    def ref(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        half = torch.cat((-x[..., 3:], x[..., :3]), -1)
        return x * cos.double()[:, None] + half * sin.double()[:, None]

    qd, kd = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    wq, wk = ref(qd), ref(kd)
    rq, rk = torch.autograd.grad((wq, wk), (qd, kd), (dq.double(), dk.double()))
    for got, want in ((yq, wq), (yk, wk), (gq, rq), (gk, rk)):
        assert_close(got, want.detach(), torch.float32)
    one = [kind_of(ks).name for ks in _kernels(rope_halves_qk, q.detach(), k.detach(), cos,
                                               sin, 6, False, False)]
    assert one == ["segments"]


@pytest.mark.parametrize("target", ["h100", "mi300x"])
def test_rope_q_and_k_cross_compile_as_one_kernel(target: str) -> None:
    art = rope_halves_qk.compile(target, q=bf16["B", 32, 4096, 128], k=bf16["B", 8, 4096, 128],
                                 cos=bf16[4096, 128], sin=bf16[4096, 128], rotary=128,
                                 partial=False, backward=False)
    (k,) = art.kernels
    assert k.spills == 0 and "(one launch)" in k.asm["triton"], k.summary()


def test_explain_says_which_kernels_share_a_launch() -> None:
    a, b, c = _rand(3, 5), _rand(7), _rand(2, 3, 4)
    text = str(_fn(THREE).explain(a, b, c, target="h100"))
    assert "3 kernel(s)" in text and "(kernels 0, 1, 2 run as one launch" in text
    with config.override(horizontal=False):
        assert "one launch" not in str(_fn(THREE).explain(a, b, c, target="h100"))
