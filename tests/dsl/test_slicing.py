"""Slices and integer indices, against the same functions run by torch in float64 (each body
below is torch code too: `__wrapped__` is the plain Python function)."""

from __future__ import annotations

import pytest
import torch

from fusile import fused
from tests.numerics import check_torch_twin


@fused
def halves(x):
    h = x.shape[-1] // 2
    return x[..., :h] * 2.0 - x[..., h:]


@fused
def rotate(x, cos, sin):
    """Rotary embedding, the textbook formula: each half from both halves."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return x1 * cos[:, :h] - x2 * sin[:, :h], x2 * cos[:, h:] + x1 * sin[:, h:]


@fused
def strided(x):
    return x[1::2, ::3] * 2.0 + x[:-1:2, 1::3]


@fused
def columns(m, w):
    y = m * w + 1.0
    return y[:, 0] + y[:, -1], m[..., -2]


@fused
def through_math(x, w, b):
    y = torch.exp(x * w) + b
    return y[1:, :, 2:7], (x - b)[:, None, 1:3]


@fused
def sliced_twice(x, w):
    """A slice of a slice (and of elementwise math on one) is one view of the parameter."""
    a = x[1:, ::2]
    b = (a * w[::2])[1::2, -3]
    return a[:, 1:4] + a[-2, 2:5], b


@fused
def reductions_sliced(x, a, b):
    """A reduction (or softmax) cut along an axis it keeps is the same call of its input cut
    there; a concat's seams cut the column sums it is added to."""
    cut = x.sum(dim=0)[1:4] + x.mean(dim=-1, keepdim=True)[2:5]
    return cut, torch.softmax(x, dim=-1)[1:3] * 2.0, torch.cat([a, b], dim=1) + x.sum(dim=0)


@fused
def up_to(x, k: int):
    return x[:, :k] + x[:, -k:]


@fused
def clamped(x, w):
    """Slice bounds past the axis clamp and a slice may be empty, as in torch: an empty piece
    leaves a concat, a concat of empty pieces is empty, a sum over nothing is 0."""
    return (torch.cat([x[:, 7:3], x[:, 2:40]], dim=1) * w[-90:90], x[:, 3:3] * 2.0,
            torch.cat([x[:, 9:], x[:, 4:1]], dim=1), x[:, 5:2].sum(dim=1), x[8:, ::4] + 1.0)


CASES = {
    "halves": (halves, [(3, 5, 38)]),
    "rotate": (rotate, [(2, 3, 9, 24), (9, 24), (9, 24)]),
    "strided": (strided, [(9, 15)]),
    "columns": (columns, [(7, 11), (11,)]),
    "through_math": (through_math, [(4, 6, 38), (38,), (1, 6, 38)]),
    "sliced_twice": (sliced_twice, [(9, 15), (15,)]),
    "reductions_sliced": (reductions_sliced, [(6, 5), (7, 2), (7, 3)]),
    "clamped": (clamped, [(6, 5), (3,)]),
}


def _check(name: str, dtype: torch.dtype, device: str) -> None:
    fn, shapes = CASES[name]
    check_torch_twin(fn, shapes, name, dtype, device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(CASES))
def test_slices_match_torch(name: str, dtype: torch.dtype) -> None:
    _check(name, dtype, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("name", list(CASES))
def test_slices_match_torch_on_the_gpu(name: str, dtype: torch.dtype) -> None:
    _check(name, dtype, "cuda")


@pytest.mark.parametrize("body, want", [
    ("(x * index(x, 1))[:, 1:]", lambda x: (x * torch.arange(7))[:, 1:]),
    ("(x + index(x, 0))[1::2, 2]", lambda x: (x + torch.arange(5)[:, None])[1::2, 2]),
    ("where(index(x, 1) < 3, x, 0.0)[..., 2:6:3]",
     lambda x: torch.where(torch.arange(7) < 3, x, 0.0)[..., 2:6:3]),
    ("(x - arange(7))[-1]", lambda x: (x - torch.arange(7))[-1]),
])
def test_slices_of_positions(body: str, want) -> None:
    """index() and arange() under a slice: the positions of the sliced range."""
    import fusile

    f = fusile.from_source(f"def f(x):\n    return {body}\n")
    x = torch.randn(5, 7)
    torch.testing.assert_close(f(x), want(x))


def test_int_parameter_bounds() -> None:
    x = torch.randn(5, 13)
    for k in (1, 4, 13):
        assert torch.equal(up_to(x, k), x[:, :k] + x[:, -k:])


def test_rope_is_one_kernel_reading_x_once() -> None:
    x, c, s = torch.randn(2, 3, 9, 24), torch.randn(9, 24), torch.randn(9, 24)
    report = rotate.plan(x, c, s).to_dict()
    assert len(report["kernels"]) == 1
    reads = report["kernels"][0]["reads"]
    x_bytes = sum(n for name, n in reads.items() if name.startswith("x"))
    assert x_bytes == x.numel() * x.element_size()  # two halves: x once, no copy


def test_a_sliced_axis_is_compiled_per_size_and_other_sizes_are_not() -> None:
    @fused
    def f(x):
        return x[..., 1:] - x[..., :-1]

    for rows, cols in ((3, 10), (7, 10), (3, 17), (5, 17)):
        x = torch.randn(rows, cols)
        assert torch.equal(f(x), x[..., 1:] - x[..., :-1])
    assert len(f._cache) == 2  # one per column count; the row count stays symbolic


def test_aot_slicing_a_symbolic_dim_says_to_give_its_size() -> None:
    import fusile
    from fusile import bf16

    f = fusile.from_source("def f(x):\n    return x[..., :2] * 2.0\n", filename="p.py")
    with pytest.raises(fusile.FusileError, match=r"sliced along axis 1.*give an int, not 'D'"):
        f.compile("h100", x=bf16["M", "D"])


def test_a_parenthesized_return_tuple_is_two_results() -> None:
    import fusile

    x = torch.randn(3, 4)
    a = fusile.from_source("def f(x):\n    return (x * 2.0, x + 1.0)\n")(x)
    b = fusile.from_source("def f(x):\n    return x * 2.0, x + 1.0\n")(x)
    assert len(a) == len(b) == 2
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v)
