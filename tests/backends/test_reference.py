"""The reference backend (float64 numpy over the MLIR) against torch in float64."""

from __future__ import annotations

import pytest
import torch

import fusile
from fusile import fused, sum
from fusile import samples as P
from tests.numerics import assert_close


def rnd(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape).to(dtype)


CASES = [
    ("layer_norm", lambda: (rnd(3, 1000), rnd(1000), rnd(1000))),
    ("rms_norm", lambda: (rnd(17, 257), rnd(257))),
    ("add_rms_norm", lambda: (rnd(5, 64), rnd(5, 64), rnd(64))),
    ("softmax_last", lambda: (rnd(7, 33),)),
    ("log_softmax_last", lambda: (rnd(7, 33),)),
    ("lse", lambda: (rnd(2, 3, 40),)),
    ("gelu_bias", lambda: (rnd(9, 31), rnd(31))),
    ("gelu_tanh", lambda: (rnd(4, 5, 6),)),
    ("swiglu", lambda: (rnd(8, 24), rnd(8, 24))),
    ("colsum_scale", lambda: (rnd(37, 5),)),
    ("linear_bias", lambda: (rnd(33, 17), rnd(17, 65), rnd(65))),
    ("linear_t_gelu", lambda: (rnd(9, 16), rnd(12, 16), rnd(12))),
    ("causal_scores", lambda: (rnd(2, 6, 6),)),
    ("variance", lambda: (rnd(4, 9),)),
    ("relu_sq_bf16", lambda: (rnd(3, 8),)),
    ("attention_plain", lambda: (rnd(2, 5, 8), rnd(2, 7, 8), rnd(2, 7, 4))),
]


def _refs(name: str):
    base = name.replace("_last", "").replace("_by_hand", "")
    return getattr(P, f"{name}_ref", None) or getattr(P, f"{base}_ref")


@pytest.mark.parametrize("name,make", CASES, ids=[c[0] for c in CASES])
def test_program_matches_torch(name: str, make) -> None:
    args = make()
    fn = getattr(P, name)
    out = fn(*args)
    ref = _refs(name)(*args)
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs, strict=True):
        assert o.shape == r.shape
        assert_close(o, r)


def test_fused_and_unfused_ir_agree() -> None:
    """The reference evaluates the unfused IR; evaluating the fused IR must give the same."""
    from fusile.backends import reference

    x, w, b = rnd(6, 40), rnd(40), rnd(40)
    compiled = P.layer_norm.compiled(x, w, b)
    args = [x.numpy(), w.numpy(), b.numpy(), 1e-5]
    (a,) = reference.evaluate(compiled.reference_graph, args)
    (f,) = reference.evaluate(compiled.fused_graph, args)
    assert_close(torch.from_numpy(f), torch.from_numpy(a), torch.float64)


def test_softmax_by_hand_equals_builtin() -> None:
    x = rnd(5, 19)
    assert_close(P.softmax_by_hand(x), P.softmax_ref(x))


@fused
def bcast(a, b, c):
    return a + b * c


@pytest.mark.parametrize("shapes", [
    [(3, 1), (1, 4), (4,)],
    [(1,), (2, 3), (1, 1)],
    [(2, 1, 5), (3, 1), (5,)],
    [(), (4, 4), (4,)],
    [(6,), (6,), ()],
])
def test_broadcasting_edge_cases(shapes: list[tuple[int, ...]]) -> None:
    args = [rnd(*s) for s in shapes]
    out = bcast(*args)
    ref = args[0].double() + args[1].double() * args[2].double()
    assert out.shape == ref.shape
    assert_close(out, ref)


def test_python_scalars_and_runtime_floats() -> None:
    @fused
    def f(x, alpha: float, n: int = 2):
        return x * alpha + n

    x = rnd(3, 4)
    assert_close(f(x, 0.5), x.double() * 0.5 + 2)
    assert_close(f(x, 3.0, n=5), x.double() * 3 + 5)
    assert len(f._cache) == 2  # the float is a runtime value; the int is a constant


@pytest.mark.parametrize("axis,keep", [(0, False), (-1, True), ((0, 2), True), (None, False),
                                       (-2, False)])
def test_reduction_axes(axis, keep) -> None:
    fn = fusile.from_source(f"""
def red(x):
    return sum(x, axis={axis!r}, keepdims={keep}), mean(x, axis={axis!r}, keepdims={keep})
""")
    # positive values: a sum of randn terms can cancel to near 0, where float32's absolute
    # error (eps x the size of the terms) is no longer small relative to the result
    x = torch.rand(3, 4, 5) + 0.5
    s, m = fn(x)
    dims = axis if axis is not None else (0, 1, 2)
    assert_close(s, x.double().sum(dims, keepdim=keep))
    assert_close(m, x.double().mean(dims, keepdim=keep))


def test_int_parameters_are_constants_usable_as_axes() -> None:
    @fused
    def red(x, dim: int = -1, keep: bool = False):
        return sum(x, axis=dim, keepdims=keep)

    x = rnd(3, 4)
    assert_close(red(x), x.double().sum(-1))
    assert_close(red(x, 0, True), x.double().sum(0, keepdim=True))


def test_sizes_do_not_recompile_but_unit_dims_do() -> None:
    fn = fusile.from_source(P.softmax_last.__fusile_source__.text,
                            globals_=P.softmax_last.__fusile_globals__)  # its own cache
    x1, x2, x3 = rnd(3, 10), rnd(8, 77), rnd(8, 1)
    fn(x1)
    fn(x2)
    assert len(fn._cache) == 1
    fn(x3)
    assert len(fn._cache) == 2


def test_bf16_in_bf16_out() -> None:
    x, w = rnd(4, 64, dtype=torch.bfloat16), rnd(64, dtype=torch.bfloat16)
    y = P.rms_norm(x, w)
    assert y.dtype == torch.bfloat16
    assert_close(y, P.rms_norm_ref(x, w))


def test_promotion_bf16_with_f16_gives_f32() -> None:
    a, b = rnd(3, 3, dtype=torch.bfloat16), rnd(3, 3, dtype=torch.float16)
    out = bcast(a, b, b)
    assert out.dtype == torch.float32


def test_inlining_composes_fused_functions() -> None:
    @fused
    def block(x, r, w):
        y, h = P.add_rms_norm(x, r, w)
        return P.swiglu(y, h)

    x, r, w = rnd(4, 32), rnd(4, 32), rnd(32)
    y, h = P.add_rms_norm_ref(x, r, w)
    assert_close(block(x, r, w), P.swiglu_ref(y, h))


@pytest.mark.parametrize("src,shapes,want", [
    # a result that spans fewer loops than an empty one: the loop's extent was taken as 1
    ("def f(x, y):\n    return x + y, exp(y) * 2.0\n", [(0, 7), (7,)],
     lambda x, y: (x + y, y.exp() * 2)),
    # reductions over an empty axis are their identity (numpy's max of nothing raised)
    ("def f(x):\n    return softmax(x, axis=-1)\n", [(3, 0)], lambda x: (x,)),
    ("def f(x):\n    return sum(x, axis=(1, 2)), max(x, axis=0)\n", [(4, 3, 0)],
     lambda x: (x.sum((1, 2)), x.amax(0))),
    ("def f(q, k, v):\n    return softmax(q @ k.T, axis=-1) @ v\n", [(3, 8), (0, 8), (0, 8)],
     lambda q, k, v: (torch.zeros(3, 8, dtype=torch.float64),)),
])
def test_empty_axes_as_torch(src: str, shapes: list, want) -> None:
    """The float64 oracle over empty axes: what torch gives, where it crashed in numpy."""
    fn = fusile.from_source(src, filename="prog.py")
    args = [rnd(*s) for s in shapes]
    with fusile.config.override(target="reference"):
        got = fn(*args)
    got = got if isinstance(got, tuple) else (got,)
    for g, w in zip(got, want(*(a.double() for a in args)), strict=True):
        assert g.shape == w.shape
        assert torch.allclose(g.double(), w, rtol=1e-6, atol=1e-6)
