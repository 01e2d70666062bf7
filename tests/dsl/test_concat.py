"""concat / cat / stack, against the same functions run by torch in float64 (each body below
is torch code too: `__wrapped__` is the plain Python function)."""

from __future__ import annotations

import pytest
import torch

import fusile
from fusile import fused
from tests.numerics import assert_close, check_torch_twin


@fused
def rope(x, cos, sin):
    """The textbook rotary embedding: one kernel that reads x once and writes one tensor."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


@fused
def then_math(a, b, w):
    c = torch.cat((a, b), dim=-1)
    return c * w + 1.0, torch.exp(c[:, 1:-1])


@fused
def stacked(a, b):
    return torch.stack([a, b * 2.0], dim=1) + 1.0, torch.stack((a, b), -1) * 0.5


@fused
def sliced(a, b):
    """Slices and indices of a concat that cross its seams, and one inside a piece."""
    c = torch.cat([a, b, a * 3.0], 0)
    return c[1:-1:2] * 2.0, c[4] + 1.0, c[::3, 1:] - 1.0


@fused
def nested(a, b, w, col):
    """A concat of a concat; a broadcast operand (col: size 1 on the concat axis) stays whole,
    and one that spans the seam (w) is cut with it."""
    c = torch.cat([torch.cat([a, b], -1), a], -1)
    return c * w + col, torch.cat([a, a * 2.0], 0) + col[:1]


@fused
def viewed(a, b, w):
    c = torch.cat([a, b], -1)
    return c.T * w, c[:, None, :] * 2.0 - c[None, 0]


@fused
def reduced(a, b):
    """Reductions and softmax of a concat: across the seam (sum, mean, max) the pieces'
    combine, along the other axes they are concatenated."""
    c = torch.cat([a * 2.0, b], dim=-1)
    top, m = c.amax(dim=0, keepdim=True), c.mean(dim=(0, 1))
    return c.sum(dim=-1), top, torch.softmax(c, dim=0), m, torch.logsumexp(c, dim=0)


@fused
def with_params(x, y):
    """Pieces that are parameters, or the same value twice: copied into place."""
    z = y * 2.0
    return torch.cat([x, z, z], -1), torch.cat([y, x], 0)


CASES = {
    "rope": (rope, [(2, 3, 9, 24), (9, 24), (9, 24)]),
    "then_math": (then_math, [(4, 3), (4, 5), (8,)]),
    "stacked": (stacked, [(5, 7), (5, 7)]),
    "sliced": (sliced, [(3, 5), (4, 5)]),
    "nested": (nested, [(6, 3), (6, 5), (11,), (6, 1)]),
    "viewed": (viewed, [(3, 4), (3, 2), (3,)]),
    "with_params": (with_params, [(4, 3), (4, 3)]),
    "reduced": (reduced, [(6, 3), (6, 5)]),
}


def _check(name: str, dtype: torch.dtype, device: str, calls: int = 1) -> None:
    fn, shapes = CASES[name]
    check_torch_twin(fn, shapes, name, dtype, device, calls)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(CASES))
def test_concat_matches_torch(name: str, dtype: torch.dtype) -> None:
    _check(name, dtype, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("name", list(CASES))
def test_concat_matches_torch_on_the_gpu(name: str, dtype: torch.dtype) -> None:
    _check(name, dtype, "cuda", calls=3)


def test_the_reference_assembles_the_pieces() -> None:
    x, c, s = torch.randn(2, 3, 9, 24), torch.randn(9, 24), torch.randn(9, 24)
    out = rope.reference(x, c, s)
    assert_close(torch.from_numpy(out), rope.__wrapped__(x.double(), c.double(), s.double()))


def test_rope_with_a_concat_is_one_kernel_that_reads_x_once() -> None:
    x, c, s = torch.randn(2, 3, 9, 24), torch.randn(9, 24), torch.randn(9, 24)
    report = rope.plan(x, c, s).to_dict()
    assert len(report["kernels"]) == 1
    kernel = report["kernels"][0]
    x_bytes = sum(n for name, n in kernel["reads"].items() if name.startswith("x"))
    assert x_bytes == x.numel() * x.element_size()
    assert sum(kernel["writes"].values()) == x.numel() * x.element_size()


def test_a_concat_can_be_asked_its_sizes_and_positions() -> None:
    f = fusile.from_source("def f(a, b):\n    c = concat([a, b], axis=-1)\n"
                           "    return c * size(c, 0) + index(c, 0) - size(c, -1) * index(c, 1)\n")
    a, b = torch.randn(6, 3), torch.randn(6, 5)
    want = torch.cat([a, b], -1) * 6 + torch.arange(6)[:, None] - 8 * torch.arange(8)
    torch.testing.assert_close(f(a, b), want)


def test_pieces_of_several_dtypes_are_promoted_as_torch_cat_does() -> None:
    f = fusile.from_source("def f(a, b):\n    return torch.cat([a, b], -1) * 2.0, "
                           "torch.stack([b, b], 0)\n", globals_={"torch": torch})
    a, b = torch.randn(4, 3).to(torch.bfloat16), torch.randn(4, 3)
    y, z = f(a, b)
    assert y.dtype == torch.float32 and z.dtype == torch.float32
    assert torch.equal(y, torch.cat([a, b], -1) * 2.0) and torch.equal(z, torch.stack([b, b]))


def test_pieces_of_new_sizes_compile_again_and_other_sizes_do_not() -> None:
    @fused
    def f(a, b, w):
        return torch.cat((a, b), dim=-1) * w

    for rows, n1, n2 in ((4, 3, 5), (4, 6, 2), (9, 3, 5)):
        a, b, w = torch.randn(rows, n1), torch.randn(rows, n2), torch.randn(n1 + n2)
        torch.testing.assert_close(f(a, b, w), torch.cat([a, b], -1) * w)
    assert len(f._cache) == 2  # one per piece sizes; the row count stays symbolic


def test_under_torch_compile_the_fake_has_the_joined_shape() -> None:
    x, c, s = torch.randn(2, 3, 9, 24), torch.randn(9, 24), torch.randn(9, 24)
    compiled = torch.compile(lambda x, c, s: rope(x, c, s) * 2.0, fullgraph=True)
    torch.testing.assert_close(compiled(x, c, s), rope.__wrapped__(x, c, s) * 2.0)


@pytest.mark.parametrize("body, message", [
    ("return torch.cat([a, b], -1).softmax(-1)", r"softmax\(\) cannot take a concat here"),
    ("c = torch.cat([a, b], -1)\n    return c @ c.T", r"matmul\(\) cannot take a concat"),
    ("return torch.cat([a, b], 0)", r"b has size 5 along axis 1 but a has size 3"),
    ("return torch.stack([a, a[:, :2]])", r"differ on axis 2"),
    ("return [a, b]", r"a list is only allowed as the pieces of concat"),
    ("return torch.cat(a, -1)", r"takes its pieces as a list or tuple"),
    ("return torch.cat([a, b], 2)", r"axis must be an integer constant in \[-2, 2\)"),
    ("return torch.cat([a, 1.0], -1)", r"joins tensors; this is a scalar"),
])
def test_refused_concats_say_what_to_write(body: str, message: str) -> None:
    f = fusile.from_source(f"def f(a, b):\n    {body}\n",
                           globals_={"torch": torch}, filename="prog.py")
    with pytest.raises(fusile.FusileError, match=message) as info:
        f(torch.randn(4, 3), torch.randn(4, 5))
    assert "prog.py:" in str(info.value)  # located at the user's line
