"""Programs that once gave a silently wrong answer, each checked against torch in float64
(never against fusile's own reference), on the interpreter and, with -m gpu, on the GPU."""

from __future__ import annotations

import math

import pytest
import torch

import fusile
from fusile import config
from tests.kernels import program as _fn
from tests.kernels import rand as _rand
from tests.numerics import assert_close

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("axis", [0, -2, -1])
def test_softmax_over_any_axis_into_a_matmul(device: str, axis: int) -> None:
    """Attention only when the softmax runs over the key axis; axis=0 once gave axis=-1."""
    q, k, v = (_rand(16, 8, device=device) for _ in range(3))
    fn = _fn(f"def f(q, k, v):\n    return softmax(q @ k.T, axis={axis}) @ v\n")
    ref = torch.softmax(q.double() @ k.double().T, dim=axis) @ v.double()
    assert_close(fn(q, k, v), ref, torch.float32, scale=4)
    is_flash = "(attention" in str(fn.plan(q, k, v))
    assert is_flash == (axis == -1)


@pytest.mark.parametrize("device", DEVICES)
def test_one_tensor_through_two_broadcast_views(device: str) -> None:
    """Two loads of one tensor in one kernel once shared a variable name."""
    x = _rand(5, 7, device=device)
    xd = x.double()
    fn = _fn("def f(x):\n    return sum(x[None, :, :] * x[:, None, :], axis=-1)\n")
    assert_close(fn(x), (xd[None] * xd[:, None]).sum(-1), torch.float32, scale=4)
    fn = _fn("def f(x):\n    return x * mean(x * x[:, None], axis=-1, keepdims=True)\n")
    assert_close(fn(x), xd * (xd * xd[:, None]).mean(-1, keepdim=True), torch.float32, scale=4)


@pytest.mark.parametrize("device", DEVICES)
def test_reductions_over_an_empty_axis(device: str) -> None:
    x = torch.randn(4, 0, device=device)
    assert torch.equal(_fn("def f(x):\n    return sum(x, axis=-1)\n")(x).cpu(), torch.zeros(4))
    assert torch.isnan(_fn("def f(x):\n    return mean(x, axis=-1)\n")(x)).all()
    lse = _fn("def f(x):\n    return logsumexp(x, axis=-1)\n")(x)
    assert torch.equal(lse.cpu(), torch.full((4,), -math.inf))
    with pytest.raises(fusile.FusileError, match=r"min\(\) over an empty axis"):
        _fn("def f(x):\n    return min(x, axis=-1)\n")(x)
    empty_batch = torch.randn(0, 5, device=device)
    assert _fn("def f(x):\n    return sum(x, axis=-1)\n")(empty_batch).shape == (0,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cols,block", [(6, 0), (3000, 256)])  # one block; a looped row
def test_max_min_propagate_nan_and_logsumexp_keeps_inf(device: str, cols: int,
                                                       block: int) -> None:
    x = torch.randn(4, cols, device=device)
    x[1, 2] = math.nan
    x[2, 0] = math.inf
    with config.override(max_row_block=block):
        for name, ref in (("max", x.amax(-1)), ("min", x.amin(-1)),
                          ("logsumexp", torch.logsumexp(x, -1))):
            out = _fn(f"def f(x):\n    return {name}(x, axis=-1)\n")(x)
            torch.testing.assert_close(out, ref, equal_nan=True)
        # a long column reduction: split across programs, then combined
        xt = x.T.contiguous()
        col = _fn("def f(x):\n    return max(x, axis=0)\n")(xt)
        torch.testing.assert_close(col, xt.amax(0), equal_nan=True)


def test_a_row_of_nans_is_a_value_not_a_warning() -> None:
    """The interpreter's max is numpy's nanmax, which warns on an all-NaN row: a NaN row is
    data here, as on a GPU (the max is NaN, no warning reaches the user)."""
    import warnings

    x = torch.randn(3, 8)  # a whole block: no padding lanes (-inf) beside the NaNs
    x[1] = math.nan
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = _fn("def f(x):\n    return max(x, axis=-1)\n")(x)
    torch.testing.assert_close(out, x.amax(-1), equal_nan=True)
    assert not [w for w in seen if "All-NaN" in str(w.message)], [str(w.message) for w in seen]


@pytest.mark.parametrize("correction,n", [(0, 6), (1, 6), (6, 6), (7, 6)])
def test_var_correction_like_torch(correction: int, n: int) -> None:
    x = torch.randn(4, n)
    out = _fn(f"def f(x):\n    return var(x, axis=-1, correction={correction})\n")(x)
    torch.testing.assert_close(out, x.var(-1, correction=correction))


def test_where_of_numbers_does_not_widen_a_tensor() -> None:
    x = torch.randn(4, 6).bfloat16()
    out = _fn("def f(c, x):\n    return where(c, 0.25, 0.75) * x\n")(x > 0, x)
    assert out.dtype == torch.bfloat16
    assert_close(out, torch.where(x > 0, 0.25, 0.75).double() * x.double(), torch.bfloat16)
    strong = _fn("def f(c, x):\n    return astype(where(c, 0.25, 0.75), f32) * x\n")(x > 0, x)
    assert strong.dtype == torch.float32


def test_a_result_from_inputs_that_need_grad_carries_a_gradient() -> None:
    fn = _fn("def f(x):\n    return x * 2.0\n")
    x = torch.randn(3, requires_grad=True)
    fn(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0))
    with torch.no_grad():
        assert torch.equal(fn(x), x.detach() * 2)
    assert torch.equal(fn(x.detach()), x.detach() * 2)


def test_reference_rounds_astype_like_the_target() -> None:
    x = torch.tensor([1.0 + 2.0**-9, 3.14159, 1e-3], dtype=torch.float32)
    fn = _fn("def f(x):\n    return astype(astype(x, bf16), f32)\n")
    rounded = x.bfloat16().double().numpy()
    assert (fn.reference(x) == rounded).all()
    assert torch.equal(fn(x), x.bfloat16().float())


@pytest.mark.parametrize("target", ["cpu", "mlir-cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_float64_tensors_with_a_float_parameter(target: str, dtype: torch.dtype) -> None:
    """A float parameter meets float64 tensors as a double, as in torch (it was rounded to
    float32 first: 0.1 came out 1.5e-9 off); a float32 program rounds it, as torch does."""
    device = "cuda" if target == "cuda" else "cpu"
    x = torch.randn(4, 6, dtype=dtype, device=device)
    fn = _fn("def f(x, eps: float = 0.5):\n    return x * (eps * 3.0) + eps\n")
    with config.override(target="auto" if target == "cuda" else target):
        out = fn(x, 0.1)
    assert out.dtype == dtype
    xd = x.double()  # the oracle: torch in float64, 0.1 a double for both dtypes
    assert_close(out, xd * (0.1 * 3.0) + 0.1 if dtype == torch.float64
                 else (x * (0.1 * 3.0) + 0.1).double(), dtype)


def test_masks_with_a_one_element_tensor() -> None:
    x, y = torch.randn(4, 6), torch.tensor([[0.5]])
    out = _fn("def f(x, y):\n    return astype((x > 0) & (y > 0), f32)\n")(x, y)
    assert torch.equal(out, ((x > 0) & (y > 0)).float())


def test_positions_sized_by_an_argument_no_kernel_reads() -> None:
    out = _fn("def f(x):\n    return index(x, 1)\n")(torch.randn(4, 6))
    assert torch.equal(out, torch.arange(6, dtype=torch.int32)[None])


def test_pow_of_non_finite_and_integer_exponents() -> None:
    x = torch.rand(5) * 2
    torch.testing.assert_close(_fn("def f(x):\n    return x ** inf\n")(x), x ** math.inf)
    torch.testing.assert_close(_fn("def f(x):\n    return x ** 3\n")(x), x ** 3)


def test_an_int_for_a_float_parameter_is_a_float() -> None:
    fn = _fn("def f(x, a: float = -2 ** 64):\n    return x * a\n")
    x = torch.randn(3)
    torch.testing.assert_close(fn(x), x * -(2.0**64))
    torch.testing.assert_close(fn(x, 3), x * 3.0)


def test_no_numpy_warning_leaks_from_the_interpreter() -> None:
    import warnings

    x = torch.rand(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _fn("def f(x):\n    return log(x * 0.0) + x ** inf\n")(x)
    assert torch.isinf(out).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows", [300, 5000])  # 3 row ranges (not a power of 2), and more
def test_split_column_reductions_of_one_signed_columns(device: str, rows: int) -> None:
    """Long column reductions are split across programs and combined: every masked lane of
    either step must hold the reduction's identity, so all-negative columns have a negative
    max and all-positive ones a positive min."""
    x = torch.rand(rows, 64, device=device) + 0.5
    for name, v, ref in (("max", -x, (-x).amax(0)), ("min", x, x.amin(0)),
                         ("sum", -x, (-x).sum(0))):
        out = _fn(f"def f(x):\n    return {name}(x, axis=0)\n")(v)
        assert_close(out, ref.double(), torch.float32, scale=8)


def test_integer_sums_accumulate_in_int64_like_torch() -> None:
    x = torch.full((2, 3), 2**30, dtype=torch.int32)
    out = _fn("def f(x):\n    return sum(x, axis=-1)\n")(x)
    assert out.dtype == torch.int64 and torch.equal(out, x.sum(-1))  # 3 * 2**30 > 2**31


def _iteration_spaces(fn: fusile.FusedFunction, *args: torch.Tensor) -> list[tuple[int, int]]:
    """(elements a kernel's grid covers, elements of its largest tensor) per kernel."""
    from fusile.lowering.partition import partition

    compiled = fn.compiled(*args)
    graph = compiled.fused_graph
    plan = partition(graph)
    size: dict[tuple, int] = {}
    for a, t in zip(graph.args, args, strict=True):
        for axis, n in enumerate(t.shape):
            size[plan.tensor_class(a, axis)] = n
    out = []
    for k in plan.kernels:
        grid = math.prod(size[plan.classes.find(k.class_global[c])] for c in k.domain)
        largest = max(math.prod(size[plan.tensor_class(t, ax)]
                                for ax in range(len(graph.tensors[t].shape)))
                      for t in [*k.reads, *k.writes])
        out.append((grid, largest))
    return out


INDEPENDENT = """
def three(a, b, c):
    return exp(a), b * 2.0, c + 1.0
"""


def test_outputs_of_unrelated_shapes_get_a_grid_each() -> None:
    """Outputs that share no tensor once shared one kernel whose grid was the product of
    their shapes: every element computed thousands of times, and past 2**31 on a GPU (the
    attention backward at one query row and 256 keys: dq off by 1e19)."""
    fn = _fn(INDEPENDENT)
    a, b, c = _rand(3, 5), _rand(7), _rand(2, 3, 4)
    for grid, largest in _iteration_spaces(fn, a, b, c):
        assert grid <= largest, f"a kernel iterates over {grid} elements, its tensors {largest}"
    for got, want in zip(fn(a, b, c), (a.double().exp(), b.double() * 2, c.double() + 1),
                         strict=True):
        assert_close(got, want, torch.float32)


@pytest.mark.gpu
def test_outputs_of_unrelated_shapes_on_the_gpu() -> None:
    """Sizes whose product passes 2**31 (2048 x 2048 times 70 000): one grid was wrong there."""
    fn = _fn(INDEPENDENT)
    a, b, c = _rand(2048, 2048, device="cuda"), _rand(70000, device="cuda"), \
        _rand(3, 50, 7, device="cuda")
    for got, want in zip(fn(a, b, c), (a.double().exp(), b.double() * 2, c.double() + 1),
                         strict=True):
        assert_close(got, want, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("src,shapes", [
    ("def f(x, y):\n    return x + y, exp(y)\n", [(0, 7), (7,)]),
    ("def f(x, y):\n    return exp(x), exp(y)\n", [(0,), (1,)]),
    ("def f(x, y):\n    return sum(x, axis=-1), exp(y)\n", [(0, 7), (1,)]),
    ("def f(x, w, y):\n    return x @ w, exp(y)\n", [(0, 5), (5, 3), (1,)]),
])
def test_a_result_beside_an_empty_grid_is_written(device: str, src: str, shapes: list) -> None:
    """exp(y) joins the kernel over x (it spans fewer of its axes; a matmul's, though it is
    no epilogue); over an empty x the kernel was skipped as having nothing to write, and
    exp(y) came back uninitialised."""
    fn = _fn(src)
    args = [_rand(*s, device=device) for s in shapes]
    first, second = fn(*args)
    assert first.numel() == 0
    assert_close(second, args[-1].double().exp(), torch.float32)


def test_an_integer_division_by_zero_raises_on_the_interpreter(monkeypatch) -> None:
    """The pointwise prologue once divided the program id by 0 blocks over empty rows: 0 on
    the interpreter, garbage on a GPU (an illegal address there). The interpreter now raises
    on a program-level integer division by zero; planted back, the old prologue fails here."""
    from fusile.backends.triton import scope

    emit = scope.Scope.emit

    def old_prologue(self, line, *rest, **kw):
        return emit(self, line.replace("tl.maximum((R + BLOCK_R - 1) // BLOCK_R, 1)",
                                       "(R + BLOCK_R - 1) // BLOCK_R"), *rest, **kw)

    monkeypatch.setattr(scope.Scope, "emit", old_prologue)
    fn = _fn("def f(x, y):\n    return exp(x) - 1.0, exp(y) - 1.0\n")
    with config.override(target="cpu"), pytest.raises(Exception, match="division by zero"):
        fn(_rand(0), _rand(1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(4, 3, 0), (4, 0, 3), (3, 0, 0)])
def test_a_reduction_over_several_axes_one_empty(device: str, shape: tuple) -> None:
    """Rows of no elements unflattened over an empty class divide by its size 0 in lanes
    that are all masked off: the sum is 0 (and the interpreter's division trap, meant for
    program-level scalars, must not fire)."""
    fn = _fn("def f(x, y):\n    return sum(x, axis=(1, 2)), exp(y)\n")
    x, y = _rand(*shape, device=device), _rand(5, device=device)
    total, e = fn(x, y)
    assert torch.equal(total.cpu(), torch.zeros(shape[0]))
    assert_close(e, y.double().exp(), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_attention_over_no_keys_is_zero_and_over_masked_keys_nan(device: str) -> None:
    """softmax(q @ k.T) @ v with no keys is 0 in torch (a matmul over an empty axis); the
    flash kernel divided its empty sum by zero (NaN). A row whose keys are all masked stays
    NaN, as torch's softmax of -inf makes it."""
    fn = _fn("def f(q, k, v):\n    return softmax(q @ k.T, axis=-1) @ v\n")
    q, k, v = _rand(3, 8, device=device), _rand(0, 8, device=device), _rand(0, 8, device=device)
    assert torch.equal(fn(q, k, v).cpu(), torch.zeros(3, 8))
    masked = _fn("def f(q, k, v, m):\n    return softmax(where(m, q @ k.T, -inf), axis=-1) @ v\n")
    k, v = _rand(5, 8, device=device), _rand(5, 8, device=device)
    m = torch.ones(3, 5, dtype=torch.bool, device=device)
    m[1] = False
    out = masked(q, k, v, m).cpu()
    assert torch.isnan(out[1]).all() and not torch.isnan(out[[0, 2]]).any()
    ref = torch.softmax(q.double() @ k.double().T, dim=-1) @ v.double()
    assert_close(out[[0, 2]], ref[[0, 2]].cpu(), torch.float32, scale=4)


@pytest.mark.parametrize("target", ["cpu", "mlir-cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("to", [torch.bfloat16, torch.float16])
def test_float64_to_a_16_bit_float_rounds_as_torch(target: str, to: torch.dtype) -> None:
    """astype of float64 to bf16 came out as garbage on the interpreter (its direct cast) and
    crashed mlir-cpu (no __truncdfbf2 in the JIT); it now goes through float32, as torch
    converts a double. The interpreter's own float32 -> bf16 cast truncated (about half the
    values an ulp toward zero); fusile rounds it to nearest even as GPUs and torch do."""
    device = "cuda" if target == "cuda" else "cpu"
    x = torch.randn(4, 257, dtype=torch.float64, device=device) * 3
    x[0, :3] = torch.tensor([float("nan"), float("inf"), -3.5e38])
    name = "bf16" if to == torch.bfloat16 else "f16"
    fn = _fn(f"def f(x):\n    return astype(x, {name}), astype(astype(x, f32), {name})\n")
    with config.override(target="auto" if target == "cuda" else target):
        out, via_f32 = fn(x)
    assert out.dtype == to and via_f32.dtype == to
    want = x.to(to)
    assert torch.equal(out[:, 1:], want[:, 1:]) and torch.equal(via_f32[:, 1:], want[:, 1:])
    assert torch.isnan(out[0, 0]) and torch.equal(out[1:, 0], want[1:, 0])


@pytest.mark.parametrize("target", ["cpu", "mlir-cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_integers_and_bools_to_bf16_convert_as_torch(target: str) -> None:
    """The interpreter cast int32 to bf16 by its bits (1 became 9.2e-41): sign() of a bf16
    tensor, which picks among integer constants and casts, gave garbage there."""
    device = "cuda" if target == "cuda" else "cpu"
    i = torch.tensor([1, 2, 3, 300, -7, 257, 0, 65537], device=device)
    fn = _fn("def f(i, x):\n    return astype(i, bf16) + astype(i > 2, bf16), sign(x)\n")
    x = torch.tensor([0.5, -2.0, 0.0, float("nan"), 3.0, -0.0, 1e-30, -7.0],
                     dtype=torch.bfloat16, device=device)
    with config.override(target="auto" if target == "cuda" else target):
        cast, sign = fn(i, x)
    assert torch.equal(cast, i.to(torch.bfloat16) + (i > 2).to(torch.bfloat16))
    assert torch.equal(sign, torch.sign(x))
