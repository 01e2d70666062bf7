"""Rows with column partials (codegen_columns.py): a row kernel that also sums over its rows.
Against torch in float64 on fresh inputs, on the interpreter (small, odd shapes; one program
or several; the looped variant) and on the GPU; cross-compiled for every GPU target."""

from __future__ import annotations

import pytest
import torch

import fusile
from fusile import config
from tests.numerics import assert_close

# dx per row with its row sum, dw and a scaled, cast db over the rows (an epilogue the
# combine runs), and a column sum of a row-normalised value (it needs the row's sum first)
SOURCE = """def f(dy, x, w, r):
    g = dy * w
    dx = r * (g - x * mean(g * x, axis=-1, keepdims=True))
    e = exp(x - max(x, axis=-1, keepdims=True))
    dw = astype(sum(dy * x * r, axis=0), w)
    s = sum(e / sum(e, axis=-1, keepdims=True), axis=0)
    return astype(dx, x), dw, astype(sum(dy, axis=0) * 0.5, w), s
"""


def _oracle(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, r: torch.Tensor
            ) -> list[torch.Tensor]:
    dy, x, w, r = (t.double() for t in (dy, x, w, r))
    g = dy * w
    dx = r * (g - x * (g * x).mean(-1, keepdim=True))
    return [dx, (dy * x * r).sum(0), (dy.sum(0) * 0.5), torch.softmax(x, -1).sum(0)]


def _inputs(m: int, n: int, dtype: torch.dtype, device: str, seed: int
            ) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dy, x = torch.randn(m, n, generator=g), torch.randn(m, n, generator=g)
    w, r = torch.randn(n, generator=g), torch.rand(m, 1, generator=g) + 0.5
    return [dy.to(dtype).to(device), x.to(dtype).to(device), w.to(dtype).to(device),
            r.to(device)]


def _check(m: int, n: int, dtype: torch.dtype, device: str) -> None:
    fn = fusile.from_source(SOURCE)
    args = _inputs(m, n, dtype, device, m * 1000 + n)
    if m > 1:  # one row is a static size 1: no sum over it
        assert [k.kind for k in fn.plan(*args).kernels] == ["rows+columns"]
    outs = fn(*args)
    for i, (out, ref) in enumerate(zip(outs, _oracle(*args), strict=True)):
        assert out.dtype == dtype and out.shape == ref.shape, i
        # the column sums add m rounded terms: a bf16 sum of 1000 rows is looser than one
        assert_close(out, ref, dtype, scale=4)


SHAPES = [(64, 256), (37, 100), (1000, 48), (3, 700), (1, 5)]
# float64: its sums stay float64 in the accumulators and the partials
DTYPES, DTYPE_IDS = [torch.float32, torch.bfloat16, torch.float64], ["f32", "bf16", "f64"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(("m", "n"), SHAPES)
def test_rows_and_column_sums_match_torch(m: int, n: int, dtype: torch.dtype) -> None:
    _check(m, n, dtype, "cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("programs", [1, 0], ids=["one-program", "default"])
@pytest.mark.parametrize(("m", "n"), [(37, 100), (200, 48)])
def test_looped_rows_add_their_column_sums_in_place(m: int, n: int, programs: int,
                                                     dtype: torch.dtype) -> None:
    """Rows longer than a block: each chunk's column sums are added to the program's row of
    partials; one program takes every row block (its partials read back each time)."""
    with config.override(max_row_block=32, row_programs=programs):
        _check(m, n, dtype, "cpu")


def test_a_later_value_over_more_rows_stays_out_of_the_kernel() -> None:
    """x0 + x1 broadcasts over a row axis the column sum does not have: in the kernel, its
    rows would be counted once per x1 row (the GPU property suite found it: twice the sum)."""
    fn = fusile.from_source("def f(x0, x1):\n"
                            "    t0 = x0 * rsqrt(mean(x0 * x0, axis=-1, keepdims=True) + 1.0)\n"
                            "    return exp(sum(t0 * x0, axis=0)), x0 + x1\n")
    g = torch.Generator().manual_seed(7)
    x0, x1 = torch.randn(5, 1, 6, generator=g), torch.randn(1, 3, 1, generator=g)
    assert [k.kind for k in fn.plan(x0, x1).kernels] == ["rows+columns", "pointwise"]
    s, h = fn(x0, x1)
    xd = x0.double()
    t0 = xd * torch.rsqrt((xd * xd).mean(-1, keepdim=True) + 1.0)
    assert_close(s, torch.exp((t0 * xd).sum(0)), torch.float32)
    assert_close(h, xd + x1.double(), torch.float32)


def test_no_rows_gives_zero_sums() -> None:
    fn = fusile.from_source(SOURCE)
    dx, dw, db, s = fn(*_inputs(0, 24, torch.float32, "cpu", 0))
    assert dx.shape == (0, 24)
    for t in (dw, db, s):
        assert t.shape == (24,) and torch.equal(t, torch.zeros(24))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(("m", "n"), [*SHAPES, (4099, 4096), (300, 40000), (0, 64)])
def test_rows_and_column_sums_match_torch_on_the_gpu(m: int, n: int, dtype: torch.dtype
                                                     ) -> None:
    if m == 0:
        fn = fusile.from_source(SOURCE)
        outs = fn(*_inputs(0, n, dtype, "cuda", 0))
        assert all(torch.equal(t.float().cpu(), torch.zeros(n)) for t in outs[1:])
        return
    _check(m, n, dtype, "cuda")


@pytest.mark.parametrize("target", ["h100", "h200", "mi300x"])
@pytest.mark.parametrize("n", [4096, 32768])
def test_norm_backwards_cross_compile_without_spills(target: str, n: int) -> None:
    """The persistent row kernel (one block per row at 4096, looped at 32768: held whole, its
    registers spilled) and its combine, for each GPU target."""
    from fusile import bf16, f32
    from fusile.stdlib import kernels as K

    art = K.layer_norm_bwd.compile(target, sizes={"M": 8192}, dy=bf16["M", n],
                                   x=bf16["M", n], weight=bf16[n], mu=f32["M", 1],
                                   rstd=f32["M", 1])
    names = [k.name for k in art.kernels]
    assert names == [("fusile_k0" if n == 4096 else "fusile_k0_looped"), "fusile_k0_combine"]
    for k in art.kernels:
        assert k.spills == 0, k.summary()
        assert k.registers is not None and 0 < k.registers <= 255, k.summary()
