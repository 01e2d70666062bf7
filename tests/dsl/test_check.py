"""Type and shape inference, promotion and the parser's AST."""

from __future__ import annotations

import pytest
import torch

import fusile
from fusile.dsl import ast
from fusile.dsl.errors import Source
from fusile.dsl.parser import parse
from fusile.dsl.types import (
    ShapeEnv,
    Sym,
    bf16,
    bool_,
    f16,
    f32,
    f64,
    i32,
    i64,
    promote,
    promote_weak,
)


def test_parse_keeps_spans_and_structure() -> None:
    fdef = parse(Source("m.py", "def f(x, eps: float = 1e-6):\n    a, b = x, -x.T\n"
                                "    return a @ b + eps\n"))
    assert fdef.name == "f"
    assert [p.name for p in fdef.params] == ["x", "eps"]
    assign, ret = fdef.body
    assert isinstance(assign, ast.Assign) and assign.targets == ("a", "b")
    assert isinstance(ret, ast.Return)
    (value,) = ret.values
    assert isinstance(value, ast.BinOp) and value.op == "add"
    assert isinstance(value.left, ast.BinOp) and value.left.op == "matmul"
    assert (value.span.line, value.span.col) == (3, 12)


def test_python_precedence_for_comparisons_and_bitwise() -> None:
    fdef = parse(Source("m.py", "def f(a, b):\n    return (a < b) & (b > 0) | ~(a == b)\n"))
    (ret,) = fdef.body
    assert isinstance(ret, ast.Return)
    top = ret.values[0]
    assert isinstance(top, ast.BinOp) and top.op == "or_"


@pytest.mark.parametrize("a,b,out", [
    (bf16, bf16, bf16), (bf16, f16, f32), (bf16, f32, f32), (f32, f64, f64), (i32, i64, i64),
    (i32, f16, f16), (bool_, i32, i32), (bool_, bool_, bool_),
])
def test_promotion(a, b, out) -> None:
    assert promote(a, b) == out == promote(b, a)


def test_weak_scalars_do_not_widen_tensors() -> None:
    assert promote_weak(bf16, f32) == bf16
    assert promote_weak(i32, f32) == f32
    assert promote_weak(bool_, i64) == i64


def test_broadcast_unifies_symbols() -> None:
    env = ShapeEnv()
    m, n, k = Sym("M"), Sym("N"), Sym("K")
    assert env.broadcast([(m, n), (k,)], None) == (m, env.find(n))
    assert env.find(k) == env.find(n)
    assert env.broadcast([(m, 1), (1, 7)], None) == (m, 7)


def test_result_dtypes_and_shapes() -> None:
    @fusile.fused
    def f(x, y):
        s = fusile.sum(x, axis=0)
        m = fusile.mean(y, axis=(0, 1), keepdims=True)
        return s, m, x > 0, fusile.astype(x, f16), x / 2

    x = torch.randn(3, 4, dtype=torch.bfloat16)
    y = torch.randint(0, 5, (2, 3), dtype=torch.int32)
    s, m, mask, h, half = f(x, y)
    assert (s.dtype, s.shape) == (torch.bfloat16, (4,))
    assert (m.dtype, m.shape) == (torch.float32, (1, 1))
    assert mask.dtype == torch.bool
    assert h.dtype == torch.float16
    assert half.dtype == torch.bfloat16


def test_annotations_name_shared_sizes() -> None:
    @fusile.fused
    def f(x: f32["M", "N"], w: f32["N"]):
        return x * w

    f(torch.randn(2, 3), torch.randn(3))
    with pytest.raises(fusile.FusileError, match="needs them equal"):
        f(torch.randn(2, 3), torch.randn(4))


def test_a_named_axis_is_an_extent_even_at_size_1() -> None:
    """An axis the annotation names is compiled symbolic at every size: at size 1 it does not
    broadcast against another name (a clear error, as for any two unequal extents), and one
    query row takes the kernel every length takes. Unnamed axes of 1 still broadcast."""
    @fusile.fused
    def f(x: fusile.Tensor[..., "L"], y: fusile.Tensor[..., "N"]):
        return x + y

    with pytest.raises(fusile.FusileError, match="needs them equal"):
        f(torch.randn(3, 1), torch.randn(3, 5))
    torch.testing.assert_close(f(torch.randn(1, 4), torch.randn(3, 4)).shape, (3, 4))
    with pytest.raises(fusile.FusileError, match="rank at least 1"):
        f(torch.tensor(1.0), torch.randn(3))
    row = torch.randn(2, 1, 8)

    @fusile.fused
    def attend(q: fusile.Tensor[..., "L", "D"], k: fusile.Tensor[..., "K", "D"], v):
        return fusile.softmax(q @ k.T, axis=-1) @ v

    keys, values = torch.randn(2, 37, 8), torch.randn(2, 37, 8)
    assert [k.kind for k in attend.explain(row, keys, values).kernels] == ["attention"]
    want = torch.softmax(row.double() @ keys.double().mT, -1) @ values.double()
    torch.testing.assert_close(attend(row, keys, values).double(), want, rtol=1e-5, atol=1e-5)


def test_dtype_subscript_makes_a_spec() -> None:
    spec = bf16["M", 4096]
    assert spec.dtype == bf16 and spec.dims == ("M", 4096)


def test_astype_to_a_tensors_dtype_and_to_the_compute_dtype() -> None:
    @fusile.fused
    def f(x, y):
        s = fusile.sum(x, axis=-1, keepdims=True)
        return (fusile.astype(s, "compute"), fusile.astype(x * 2.0, y),
                fusile.astype(x, y * 2.0), fusile.astype(x, (y + 1.0).dtype))

    x = torch.randn(3, 4, dtype=torch.bfloat16)
    stat, cast, of_expr, of_attr = f(x, torch.randn(2, dtype=torch.float16))
    assert stat.dtype == torch.float32  # bf16 computes in f32, and the statistic stays there
    assert cast.dtype == of_expr.dtype == of_attr.dtype == torch.float16
    x64 = torch.randn(3, 4, dtype=torch.float64)
    assert f(x64, x64)[0].dtype == torch.float64
