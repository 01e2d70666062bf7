"""FUSILE_TARGET=mlir-cpu (fusile/backends/mlir_cpu.py): the fused linalg module JIT-compiled
by MLIR for this CPU agrees with torch in float64 on the sample programs (float32, float64,
bfloat16, float16), on strided and sliced inputs, returned concats, integers, contractions,
derived gradients and the stdlib's forward and backward; large row-separable calls run in
blocks on threads, and only those; float32 exp is MLIR arithmetic, checked at its edges."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

import fusile
from fusile import config
from fusile import samples as S
from fusile.backends import mlir_cpu
from tests.numerics import assert_close


@contextlib.contextmanager
def one_row_blocks(on: bool = True) -> Iterator[None]:
    """Every row-separable mlir-cpu call of any size runs as blocks of one row (as a large
    call does in larger blocks), so that small test inputs take the block path."""
    saved = mlir_cpu._BLOCK_BYTES, mlir_cpu._THREAD_BYTES
    if on:
        mlir_cpu._BLOCK_BYTES, mlir_cpu._THREAD_BYTES = 1, 0
    try:
        yield
    finally:
        mlir_cpu._BLOCK_BYTES, mlir_cpu._THREAD_BYTES = saved


@pytest.fixture(autouse=True)
def _mlir_cpu():
    with config.override(target="mlir-cpu"):
        yield


def _check(fn, ref, args, dtype) -> None:
    out = fn(*args)
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref(*[a.double() if a.is_floating_point() else a for a in args])
    refs = refs if isinstance(refs, tuple) else (refs,)
    for o, r in zip(outs, refs, strict=True):
        assert o.dtype == dtype and o.shape == r.shape
        assert_close(o, r, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16,
                                   torch.float16])
@pytest.mark.parametrize("name", sorted(S.cases(2, 2)))
def test_sample_programs(name: str, dtype: torch.dtype) -> None:
    fn, ref, args = S.cases(37, 129, dtype)[name]
    _check(fn, ref, args, dtype)


@pytest.mark.parametrize("name, shapes", [
    ("linear_bias", [(5, 8), (8, 6), (6,)]), ("linear_t_gelu", [(5, 8), (6, 8), (6,)]),
    ("attention_plain", [(5, 8), (7, 8), (7, 4)]), ("causal_scores", [(6, 6)]),
    ("variance", [(5, 9)])])
def test_contractions_masks_and_statistics(name: str, shapes: list) -> None:
    g = torch.Generator().manual_seed(len(name))
    args = [torch.randn(s, generator=g) for s in shapes]
    _check(getattr(S, name), getattr(S, name + "_ref"), args, torch.float32)


def test_strided_inputs_are_read_in_place() -> None:
    base = torch.randn(40, 70)
    x, w = base.t()[::2], torch.randn(40)[::1]  # (35, 40) with strides (1, 140)
    assert not x.is_contiguous()
    _check(S.rms_norm, S.rms_norm_ref, [x, w], torch.float32)


def test_sliced_parameters_and_returned_concats() -> None:
    f = fusile.from_source("def f(x, c, s):\n    h = x.shape[-1] // 2\n"
                           "    x1, x2 = x[..., :h], x[..., h:]\n"
                           "    return concat([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)\n")
    x, c, s = torch.randn(3, 7, 10), torch.randn(7, 5), torch.randn(7, 5)

    def ref(x, c, s):
        x1, x2 = x[..., :5], x[..., 5:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)

    _check(f, ref, [x, c, s], torch.float32)


def test_integers_and_booleans() -> None:
    f = fusile.from_source("def f(i, x):\n    return sum(i * 3, axis=0), x > 0.5, "
                           "where(x > 0, i, -i)\n")
    i, x = torch.randint(-9, 9, (6, 5)), torch.randn(6, 5)
    total, mask, picked = f(i, x)
    assert torch.equal(total, (i * 3).sum(0)) and torch.equal(mask, x > 0.5)
    assert torch.equal(picked, torch.where(x > 0, i, -i))


def test_derived_gradients_run_there_too() -> None:
    x, w = torch.randn(6, 33, requires_grad=True), torch.randn(33, requires_grad=True)
    S.rms_norm(x, w).square().sum().backward()
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    S.rms_norm_ref(xr, wr).square().sum().backward()
    assert_close(x.grad, xr.grad, torch.float32, scale=4)
    assert_close(w.grad, wr.grad, torch.float32, scale=4)


def test_stdlib_forward_and_backward() -> None:
    import torch.nn.functional as F

    import fusile.stdlib as L

    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(6, 32, generator=g), torch.randn(32, generator=g)
    t = torch.randint(0, 32, (6,), generator=g)
    q, k, v = (torch.randn(2, 4, 9, 16, generator=g) for _ in range(3))
    cases = [(lambda x, w: L.rms_norm(x, (32,), w), lambda x, w: F.rms_norm(x, (32,), w),
              [x, w]),
             (lambda x: L.cross_entropy(x, t), lambda x: F.cross_entropy(x, t), [x]),
             (lambda q, k, v: L.attention(q, k, v, causal=True),
              lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
              [q, k, v])]
    for fn, ref, args in cases:
        ins = [a.clone().requires_grad_() for a in args]
        refs = [a.double().requires_grad_() for a in args]
        out, want = fn(*ins), ref(*refs)
        assert_close(out, want, torch.float32, scale=4)
        dy = torch.randn(out.shape, generator=g)
        for got, exp in zip(torch.autograd.grad(out, ins, dy),
                            torch.autograd.grad(want, refs, dy.double()), strict=True):
            assert_close(got, exp, torch.float32, scale=8)


def test_a_buffer_returned_twice_or_an_input_returned() -> None:
    """Results that share the function's one buffer (freed once) or are the input itself."""
    x = torch.randn(4, 3)
    twice = fusile.from_source("def f(x):\n    y = x * 2.0\n    return y, y\n")(x)
    same = fusile.from_source("def f(x):\n    return x, x * 2.0\n")(x)
    for out in (*twice, same[1]):
        assert torch.equal(out, x * 2)
    assert torch.equal(same[0], x) and twice[0].data_ptr() != twice[1].data_ptr()


# each program and the axis it is row-separable along (rows [a, b) of the result need only
# rows [a, b) of x along it), or None where neither axis is: a reduction, an index or a size
# along an axis ties its rows together
BLOCKS = {
    "softmax": ("def f(x):\n    return softmax(x, axis=-1)\n", 0),
    "norm": ("def f(x, w):\n    return x * w / sqrt(mean(x * x, axis=-1, keepdims=True))\n",
             0),
    "elementwise": ("def f(x, y):\n    return x * sigmoid(y)\n", 0),
    "column_sum": ("def f(x):\n    return x - sum(x, axis=0, keepdims=True)\n", 1),
    "row_index": ("def f(x):\n    return x + index(x, 0)\n", 1),
    "row_count": ("def f(x):\n    return x / size(x, 0)\n", 1),
    "both_sums": ("def f(x):\n    return sum(x, axis=0, keepdims=True) + sum(x, axis=1, "
                  "keepdims=True)\n", None),
    "both_indices": ("def f(x):\n    return x + index(x, 0) * index(x, 1)\n", None),
    "total": ("def f(x):\n    return x / sum(x)\n", None),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_row_blocks_only_where_rows_are_independent(name: str) -> None:
    """The plan says which programs may run in blocks of rows, and running every call of
    each program in one-row blocks on two threads still gives torch's answer."""
    from fusile.lowering.row_blocks import row_split

    src, axis = BLOCKS[name]
    fn = fusile.from_source(src, filename=f"{name}.py")
    g = torch.Generator().manual_seed(5)
    args = [torch.randn(37, 50, generator=g)] + (
        [torch.randn(50, generator=g)] if name == "norm" else
        [torch.randn(37, 50, generator=g)] if name == "elementwise" else [])
    split = row_split(fn.compiled(*args).fused_graph)
    assert (split and split.args[0]) == axis
    with config.override(cpu_threads=2), one_row_blocks():
        out = fn(*args)
    with config.override(target="reference"):
        want = torch.as_tensor(fn(*args))
    assert_close(out, want.double(), torch.float32, scale=4)


def test_a_large_call_runs_in_blocks_and_agrees() -> None:
    """A call past the size where blocks start, at a row count no block size divides."""
    x = torch.randn(1031, 700, generator=torch.Generator().manual_seed(6))
    fn = fusile.from_source("def f(x):\n    return log_softmax(x, axis=-1)\n")
    prog = mlir_cpu.MlirCpuProgram(fn.compiled(x))
    with config.override(cpu_threads=3):
        assert prog._blocks([x]) is not None
        out = fn(x)
    assert_close(out, torch.log_softmax(x.double(), -1), torch.float32, scale=4)


def test_exp_at_its_edges() -> None:
    """float32 exp as arithmetic (backends/cpu_math.py): near over- and underflow, in the
    denormals, at the infinities and NaN."""
    edges = [-float("inf"), -110.0, -103.9, -100.0, -88.0, -87.3, -20.0, -1e-3, -1e-30, 0.0,
             1e-30, 1e-3, 0.5, 1.0, 10.0, 88.0, 88.7, 88.8, 1e3, float("inf"), float("nan")]
    x = torch.cat([torch.tensor(edges), torch.linspace(-100, 88, 10007)])
    got = fusile.from_source("def f(x):\n    return exp(x)\n")(x)
    want = torch.exp(x.double())
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(torch.isinf(got), torch.isinf(want.float()))
    fin = torch.isfinite(want.float()) & (want > 1e-37)  # normal float32 results
    rel = ((got.double() - want) / want)[fin].abs().max().item()
    assert rel < 4 * 2.0**-23, rel  # within 4 ulp
    tiny = torch.isfinite(want) & (want <= 1e-37)  # denormal or flushed: absolute error
    assert (got.double() - want)[tiny].abs().max().item() < 2e-45 * 4


def test_blocks_run_in_a_forked_child_too() -> None:
    """A process forked after a threaded call (a DataLoader worker) has none of the parent's
    block threads: its own calls still finish, with the right numbers."""
    import multiprocessing

    x = torch.randn(64, 33, generator=torch.Generator().manual_seed(8))
    fn = fusile.from_source("def f(x):\n    return softmax(x, axis=-1)\n")
    with config.override(cpu_threads=2), one_row_blocks():
        fn(x)  # the parent's pool exists now
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            out = pool.apply_async(_softmax_in_child, (x,)).get(timeout=60)
    assert_close(out, torch.softmax(x.double(), -1), torch.float32, scale=4)


def _softmax_in_child(x: torch.Tensor) -> torch.Tensor:
    fn = fusile.from_source("def f(x):\n    return softmax(x, axis=-1)\n")
    with config.override(target="mlir-cpu", cpu_threads=2), one_row_blocks():
        return fn(x)


def test_results_are_computed_in_the_callers_tensors() -> None:
    """cpu_outs.py: a result computed into a fresh tensor is computed into the tensor the call
    returns (no buffer of the function's, no copy), two results that MLIR started from one
    empty tensor each into its own; an input returned, or a value returned twice, still
    comes back the old way."""
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(8))
    fn = fusile.from_source("def f(x):\n    s = softmax(x, axis=-1)\n"
                            "    return s, x, x * 2.0, s\n")
    prog = mlir_cpu.MlirCpuProgram(fn.compiled(x))
    assert prog.dests == [True, False, True, False]
    s, same, total, again = fn(x)
    want = torch.softmax(x.double(), -1)
    assert_close(s, want, torch.float32, scale=4)
    assert_close(again, want, torch.float32, scale=4)
    assert torch.equal(same, x) and same.data_ptr() != x.data_ptr()
    assert torch.equal(total, x * 2.0)


def test_no_jit_error_on_stderr_for_a_copy_into_a_strided_result(capfd) -> None:
    """A float64 program with a whole reduction kept as (1, 1) writes it through a copy into
    a strided buffer, which MLIR lowers to the memrefCopy runtime the JIT does not link: the
    copy is seen after bufferization and the result allocated instead, before LLVM prints
    "JIT session error: Symbols not found: [ memrefCopy ]"."""
    fn = fusile.from_source("def var2(x):\n    return var(x, axis=1), "
                            "var(x, axis=(0, 1), keepdims=True, correction=1)\n")
    x = torch.randn(8, 16, dtype=torch.float64)
    a, b = fn(x)
    assert_close(a, x.var(1, unbiased=False), torch.float64)
    assert_close(b, x.var(unbiased=True).reshape(1, 1), torch.float64)
    assert "JIT session error" not in capfd.readouterr().err
