"""Targeted checks on the MLIR fusile emits (as emitted, and after the pass pipeline)."""

from __future__ import annotations

import torch

from fusile import erf, fused, mean, rsqrt, softmax
from tests.filecheck import checks_of, filecheck


@fused
def layer_norm(x, w, b, eps: float = 1e-5):
    # the mean, broadcast back along the row, reads (d0) of a rank-1 tensor: no copy
    # CHECK: #map{{[0-9]*}} = affine_map<(d0, d1) -> (d0)>
    # CHECK: func.func @layer_norm(%arg0: tensor<?x?xbf16>, %arg1: tensor<?xbf16>, %arg2: tensor<?xbf16>, %arg3: f32) -> tensor<?x?xbf16>
    # loads upcast to f32; the row sum accumulates in f32
    # CHECK: iterator_types = ["parallel", "reduction"]
    # CHECK: arith.extf %in : bf16 to f32
    # CHECK-NEXT: arith.addf
    # CHECK: iterator_types = ["parallel", "reduction"]
    # CHECK: math.rsqrt
    # results are stored in bf16
    # CHECK: arith.truncf {{.*}} : f32 to bf16
    # CHECK: return {{.*}} : tensor<?x?xbf16>
    mu = mean(x, axis=-1, keepdims=True)
    xc = x - mu
    return xc * rsqrt(mean(xc * xc, axis=-1, keepdims=True) + eps) * w + b


@fused
def add_rms_norm(x, residual, weight, eps: float = 1e-6):
    # CHECK: func.func @add_rms_norm
    # CHECK: arith.addf %in, %in_1 : f32
    # the square is fused into the reduction's region
    # CHECK: iterator_types = ["parallel", "reduction"]
    # CHECK: arith.mulf %in, %in
    # CHECK-NEXT: arith.addf
    # CHECK: math.rsqrt
    # CHECK: return %{{[0-9]+}}, %{{[0-9]+}} : tensor<?x?xf32>, tensor<?x?xf32>
    h = x + residual
    return h * rsqrt(mean(h * h, axis=-1, keepdims=True) + eps) * weight, h


@fused
def softmax_rows(x):
    # the max reduction, with -inf as its identity
    # CHECK: arith.constant 0xFF800000 : f32
    # CHECK: arith.maximumf
    # CHECK: math.exp
    # CHECK: arith.addf
    # CHECK: arith.divf
    return softmax(x, axis=-1)


@fused
def gelu_bias(x, b):
    # CHECK: affine_map<(d0, d1) -> (d1)>
    # CHECK: arith.addf
    # CHECK: math.erf
    # CHECK-NOT: linalg.generic
    # CHECK: return
    h = x + b
    return 0.5 * h * (1.0 + erf(h * 0.7071067811865476))


@fused
def linear_bias(x, w, b):
    # CHECK: affine_map<(d0, d1) -> (d1)>
    # CHECK: linalg.matmul ins(%arg0, %arg1 : tensor<?x?xf32>, tensor<?x?xf32>)
    # CHECK: arith.addf
    return x @ w + b


@fused
def linear_t(x, w):
    # a transposed operand is an indexing map of the contraction, not a copy
    # CHECK: affine_map<(d0, d1, d2) -> (d1, d2)>
    # CHECK: iterator_types = ["parallel", "parallel", "reduction"]
    # CHECK: arith.mulf
    # CHECK-NEXT: arith.addf
    return x @ w.T


def _mlir(fn, *args, stage: str = "fused") -> str:
    return fn.mlir(*args, stage=stage)


def test_layer_norm_bf16() -> None:
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    w = torch.randn(64, dtype=torch.bfloat16)
    filecheck(_mlir(layer_norm, x, w, w), checks_of(layer_norm))


def _check(fn, *args) -> None:
    filecheck(_mlir(fn, *args), checks_of(fn))


def test_add_rms_norm() -> None:
    x = torch.randn(3, 32)
    _check(add_rms_norm, x, x, torch.randn(32))


def test_softmax() -> None:
    _check(softmax_rows, torch.randn(3, 32))


def test_gelu_bias_fuses_into_one_generic() -> None:
    x = torch.randn(3, 32)
    _check(gelu_bias, x, torch.randn(32))
    assert _mlir(gelu_bias, x, torch.randn(32)).count("linalg.generic") == 1


def test_matmul_bias_emits_named_matmul_then_generalizes() -> None:
    x, w, b = torch.randn(5, 7), torch.randn(7, 3), torch.randn(3)
    filecheck(_mlir(linear_bias, x, w, b, stage="mlir"), checks_of(linear_bias))
    assert "linalg.matmul" not in _mlir(linear_bias, x, w, b, stage="linalg")


def test_transposed_operand() -> None:
    _check(linear_t, torch.randn(5, 7), torch.randn(3, 7))


def test_ops_carry_the_users_file_and_line() -> None:
    text = _mlir(gelu_bias, torch.randn(2, 8), torch.randn(8), stage="mlir")
    assert "test_to_mlir.py" in text
    line = gelu_bias.__wrapped__.__code__.co_firstlineno
    assert any(f"test_to_mlir.py\":{line + k}:" in text for k in range(1, 10))


def test_every_stage_verifies_and_debug_dumps(capsys) -> None:
    from fusile import config

    @fused
    def f(x):
        return softmax(x * 2.0, axis=0)

    with config.override(debug="ast,mlir"):
        f(torch.randn(3, 5))
    err = capsys.readouterr().err
    for stage in ("ast", "mlir", "linalg", "fused"):
        assert f"FUSILE_DEBUG {stage}" in err


_REACCUMULATED = """
#map = affine_map<(d0, d1) -> (d1)>
#map1 = affine_map<(d0, d1) -> (d0)>
#map2 = affine_map<(d0, d1) -> (d0, d1)>
func.func @f(%x: tensor<?xf32>, %acc: tensor<?xf32>, %o: tensor<?x?xf32>) -> tensor<?x?xf32> {
  %r:2 = linalg.generic {indexing_maps = [#map, #map1, #map2],
      iterator_types = ["parallel", "parallel"]}
      ins(%x : tensor<?xf32>) outs(%acc, %o : tensor<?xf32>, tensor<?x?xf32>) {
  ^bb0(%in: f32, %a: f32, %out: f32):
    %s = arith.addf %in, %a : f32
    linalg.yield %s, %s : f32, f32
  } -> (tensor<?xf32>, tensor<?x?xf32>)
  return %r#1 : tensor<?x?xf32>
}
"""


def test_a_parallel_generic_reading_a_narrower_init_is_refused() -> None:
    """What upstream fusion made of `sum(stack([x, x], 1), 1) + x` before the emitter stopped
    reading the init of a sum without reduction loops: out[d0] updated once per d1. The
    check after fusion names it; a reduction over d1 (the same maps) is fine."""
    from torch_mlir import ir

    from fusile.lowering.graph import reaccumulated, read_graph

    with ir.Context():
        bad = read_graph(ir.Module.parse(_REACCUMULATED))
        assert "leaves out a parallel loop" in reaccumulated(bad)
        fine = read_graph(ir.Module.parse(_REACCUMULATED.replace('["parallel", "parallel"]',
                                                                 '["parallel", "reduction"]')))
        assert reaccumulated(fine) == ""
