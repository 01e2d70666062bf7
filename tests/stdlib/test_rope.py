"""stdlib rope: both conventions, partial rotary, Hugging Face's cos/sin shapes and strided q,
forward and backward, against torch float64 autograd of the textbook formulas (written here,
sharing nothing with fusile's kernels)."""

from __future__ import annotations

import pytest
import torch

import fusile.stdlib as S
from fusile.stdlib.rope import rope_halves, rope_pairs
from tests.numerics import assert_close


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   interleaved: bool = False) -> torch.Tensor:
    r = cos.shape[-1]
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    rot, rest = x[..., :r], x[..., r:]
    if interleaved:  # GPT-J: pairs (2i, 2i + 1)
        x0, x1 = rot[..., ::2], rot[..., 1::2]
        y = torch.stack((x0 * cos[..., ::2] - x1 * sin[..., ::2],
                         x1 * cos[..., 1::2] + x0 * sin[..., 1::2]), -1).flatten(-2)
    else:
        y = rot * cos + _rotate_half(rot) * sin
    return torch.cat((y, rest), -1)


# (x shape, cos shape, interleaved, x transposed as HF's q is): odd sizes, random tables
# (the halves of cos and sin differ, so a backward that mixes them up shows)
CASES = {
    "halves": ((2, 3, 7, 10), (7, 10), False, False),
    "halves_hf": ((2, 3, 9, 16), (2, 9, 16), False, True),
    "halves_partial": ((2, 3, 7, 18), (7, 6), False, False),
    "pairs": ((2, 3, 7, 10), (7, 10), True, False),
    "pairs_partial_hf": ((2, 5, 9, 22), (2, 9, 8), True, True),
    "three_dims": ((5, 7, 12), (7, 12), False, False),
}


def _check(name: str, dtype: torch.dtype, device: str) -> None:
    shape, cshape, interleaved, transposed = CASES[name]
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    x = torch.randn(shape, generator=g).to(dtype).to(device)
    if transposed:  # (batch, seq, heads, d) viewed as (batch, heads, seq, d)
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    cos, sin = (torch.randn(cshape, generator=g).to(dtype).to(device) for _ in range(2))
    dy = torch.randn(shape, generator=g).to(dtype).to(device)
    xg = x.clone().requires_grad_()
    y = S.rope(xg, cos, sin, interleaved=interleaved)
    y.backward(dy)
    xd = x.detach().double().requires_grad_()
    ref = rope_reference(xd, cos.double(), sin.double(), interleaved)
    ref.backward(dy.double())
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
    assert_close(y, ref, dtype)
    assert xg.grad is not None
    assert_close(xg.grad, xd.grad, dtype)
    if x.dim() != 4:
        return
    # q and k in one call: k with fewer heads (GQA), and only q's result used (k's gradient
    # is then zero)
    q, k = x.clone().requires_grad_(), x[:, :1].clone().requires_grad_()
    yq, yk = S.apply_rotary_pos_emb(q, k, cos, sin, interleaved=interleaved)
    assert_close(yq, ref, dtype)
    assert_close(yk, ref[:, :1], dtype)
    yq.backward(dy)
    assert q.grad is not None and k.grad is not None
    assert_close(q.grad, xd.grad, dtype)
    assert not k.grad.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(CASES))
def test_rope_matches_torch(name: str, dtype: torch.dtype) -> None:
    _check(name, dtype, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("name", list(CASES))
def test_rope_matches_torch_on_the_gpu(name: str, dtype: torch.dtype) -> None:
    _check(name, dtype, "cuda")


def test_apply_rotary_pos_emb_is_hugging_faces() -> None:
    q, k = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 9, 16)
    cos, sin = torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    got = S.apply_rotary_pos_emb(q, k, cos, sin)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    for out, x in zip(got, (q, k), strict=True):
        assert_close(out, (x * c + _rotate_half(x) * s).double())


@pytest.mark.parametrize("fn, interleaved", [(rope_halves, False), (rope_pairs, True)])
@pytest.mark.parametrize("backward", [False, True])
def test_each_pass_is_one_kernel_reading_x_once(fn, interleaved: bool, backward: bool) -> None:
    x, cos, sin = torch.randn(2, 3, 7, 16), torch.randn(7, 16), torch.randn(7, 16)
    args = (x, cos, sin)
    if interleaved:
        args = (x.unflatten(-1, (8, 2)), cos.unflatten(-1, (8, 2)), sin.unflatten(-1, (8, 2)))
    kernels = fn.plan(*args, 16, False, backward).to_dict()["kernels"]
    assert len(kernels) == 1
    reads = sum(n for name, n in kernels[0]["reads"].items() if name.startswith("x"))
    assert reads == x.numel() * 4 and sum(kernels[0]["writes"].values()) == x.numel() * 4


@pytest.mark.parametrize("target", ["h100", "h200", "mi300x"])
def test_rope_kernels_cross_compile_without_spills(target: str) -> None:
    """Both conventions, forward and backward, a partial rotary among them: hsaco/cubin with
    registers and spills from the target's own compiler, no GPU needed."""
    from fusile import bf16

    kernels = []
    for backward in (False, True):
        art = rope_halves.compile(target, x=bf16["B", 32, 4096, 128], cos=bf16[4096, 64],
                                  sin=bf16[4096, 64], rotary=64, partial=True,
                                  backward=backward)
        kernels += art.kernels
        art = rope_pairs.compile(target, x=bf16["B", 32, 4096, 64, 2], cos=bf16[4096, 64, 2],
                                 sin=bf16[4096, 64, 2], rotary=128, partial=False,
                                 backward=backward)
        kernels += art.kernels
    assert len(kernels) == 4
    for k in kernels:
        assert k.spills == 0, k.summary()
