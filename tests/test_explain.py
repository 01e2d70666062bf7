"""explain(): exact byte and FLOP counts against hand counts, and the roofline."""

from __future__ import annotations

import pytest
import torch

from fusile import bf16, f32, i64, samples

M, N, K = 8, 1024, 64


def test_layer_norm_counts() -> None:
    ex = samples.layer_norm.explain(torch.randn(M, N), torch.randn(N), torch.randn(N))
    (k,) = ex.kernels
    assert k.read_bytes == 4 * M * N + 4 * N + 4 * N  # x, weight, bias
    assert k.write_bytes == 4 * M * N
    # mean: MN adds + M divides; x - mu: MN; xc*xc: MN; its sum: MN; /n, +eps, rsqrt: 3M;
    # xc * rstd * w + b: 3MN
    assert ex.program_flops == 7 * M * N + 4 * M
    assert ex.bytes < ex.unfused_bytes


def test_softmax_counts() -> None:
    ex = samples.softmax_last.explain(torch.randn(M, N))
    (k,) = ex.kernels
    assert (k.read_bytes, k.write_bytes) == (4 * M * N, 4 * M * N)
    # max: MN; infinite-max guard: M abs and M compares; x - m: MN; exp and sum: 2MN;
    # exp and divide: 2MN
    assert ex.program_flops == 6 * M * N + 2 * M


def test_add_rms_norm_counts() -> None:
    x = torch.randn(M, N, dtype=torch.bfloat16)
    ex = samples.add_rms_norm.explain(x, x.clone(), torch.randn(N, dtype=torch.bfloat16))
    (k,) = ex.kernels
    assert k.read_bytes == 2 * (2 * M * N) + 2 * N  # x, residual (bf16), weight
    assert k.write_bytes == 2 * (2 * M * N)  # y and h
    # x + r: MN; h*h: MN; sum: MN; /n, +eps, rsqrt: 3M; h * rstd * w: 2MN
    assert ex.program_flops == 5 * M * N + 3 * M
    assert ex.unfused_bytes > ex.bytes


def test_matmul_bias_counts() -> None:
    x, w, b = torch.randn(M, K), torch.randn(K, N), torch.randn(N)
    ex = samples.linear_bias.explain(x, w, b)
    assert ex.program_flops == 2 * M * N * K + M * N
    (k,) = ex.kernels  # the bias add is the product's epilogue
    assert k.kind == "contraction"
    assert k.read_bytes == 4 * (M * K + K * N + N)
    assert k.write_bytes == 4 * M * N
    assert k.flops == 2 * M * N * K + M * N


def test_roofline_uses_the_targets_numbers() -> None:
    ex = samples.rms_norm.explain(x=bf16["M", 4096], weight=bf16[4096], sizes={"M": 16384},
                                  target="mi300x")
    (k,) = ex.kernels
    assert k.bound == "memory"
    expected_us = k.bytes / 5.3e12 * 1e6
    assert k.roofline_us == pytest.approx(expected_us)
    assert "mi300x" in str(ex) and ex.to_dict()["launches_saved"] >= 1


def test_symbolic_sizes_need_values() -> None:
    from fusile import FusileError

    with pytest.raises(FusileError, match="sizes="):
        samples.rms_norm.explain(x=f32["M", 64], weight=f32[64])


@pytest.mark.gpu
def test_measure_on_gpu() -> None:
    fn, _ref, args = samples.cases(4096, 4096, torch.bfloat16, "cuda")["layer_norm"]
    ex = fn.explain(*args, measure=True)
    (k,) = ex.kernels
    assert k.measured_us and 0.2 < (k.achieved or 0) <= 1.2


def test_a_bf16_matmul_is_compute_bound_at_the_bf16_peak() -> None:
    """4096^3 bf16 on h100, counted by hand: 2 * 4096^3 FLOPs over 3 * 2 * 4096^2 bytes."""
    from fusile import from_source

    n = 4096
    mm = from_source("def mm(x, w):\n    return x @ w\n")
    ex = mm.explain(x=bf16["M", n], w=bf16[n, n], sizes={"M": n}, target="h100")
    (k,) = ex.kernels
    assert (k.kind, k.read_bytes, k.write_bytes) == ("contraction", 4 * n * n, 2 * n * n)
    assert k.flops == ex.program_flops == 2 * n**3
    assert k.intensity == pytest.approx(2 * n**3 / (6 * n * n))
    assert k.bound == "compute"
    assert k.roofline_us == pytest.approx(2 * n**3 / 989e12 * 1e6)  # bf16, not fp32
    # unfused: fill the f32 accumulator (4 n^2 written), the product (reads 4 n^2, writes
    # 4 n^2), the cast to bf16 (reads 4 n^2, writes 2 n^2): 18 n^2 bytes in 3 kernels
    assert (ex.unfused_kernels, ex.unfused_bytes) == (3, 18 * n * n)
    f32_ex = mm.explain(x=f32["M", n], w=f32[n, n], sizes={"M": n}, target="h100")
    assert f32_ex.kernels[0].roofline_us == pytest.approx(2 * n**3 / 67e12 * 1e6)


def test_bf16_attention_runs_at_the_tensor_core_peak() -> None:
    """A flash kernel's products are tile dots: with 16-bit operands its roofline takes the
    bf16 peak (the fp32 one made a long-sequence attention look 15x slower than it can be)."""
    from fusile import from_source

    att = from_source("def att(q, k, v):\n    return softmax((q @ k.T) * 0.125, axis=-1) @ v\n")
    s = 8192
    ex = att.explain(q=bf16["S", 128], k=bf16["S", 128], v=bf16["S", 128], sizes={"S": s},
                     target="h100")
    (k,) = ex.kernels
    assert k.kind == "attention" and k.flops >= 4 * s * s * 128
    t_mem = (k.read_bytes + k.write_bytes) / 3.35e12
    assert k.roofline_us == pytest.approx(1e6 * max(t_mem, k.flops / 989e12))
    assert k.bound == "compute"


def test_a_parameter_named_target_is_the_functions_own() -> None:
    """A loss's class indices are often called `target`: explain and triton take a value that
    is not a target name as that argument."""
    from fusile.stdlib import kernels as K

    ex = K.cross_entropy_fwd.explain(logits=bf16["N", 4096], target=i64["N"], ignore_index=-100,
                                     smoothing=0.0, reduce=2, sizes={"N": 8})
    assert ex.kernels[0].read_bytes >= 8 * 4096 * 2 + 8 * 8  # the logits and the targets
    logits, labels = torch.randn(8, 32), torch.randint(0, 32, (8,))
    src = K.cross_entropy_fwd.triton(logits, target=labels, ignore_index=-100, smoothing=0.0,
                                     reduce=2)
    assert "def fusile_k0(" in src


def test_a_pointwise_program_counted_by_hand() -> None:
    from fusile import from_source

    fn = from_source("def pw(x):\n    return x * 2.0 + 1.0\n")
    ex = fn.explain(x=f32["M", 1024], sizes={"M": 8}, target="mi300x")
    (k,) = ex.kernels
    e = 8 * 1024
    assert (k.kind, k.read_bytes, k.write_bytes, k.flops) == ("pointwise", 4 * e, 4 * e, 2 * e)
    assert k.intensity == pytest.approx(0.25) and k.bound == "memory"
    assert k.roofline_us == pytest.approx(8 * e / 5.3e12 * 1e6)
    assert (ex.unfused_kernels, ex.unfused_bytes) == (2, 16 * e)  # x*2 and +1, each r+w
    assert ex.to_dict()["launches_saved"] == 1 and ex.to_dict()["bytes_saved"] == 8 * e


def test_this_cpu_is_a_target_for_explain() -> None:
    """mlir-cpu (and auto on CPU tensors): the roofline from this machine's measured copy and
    matmul rates, said so; not a target to compile for ahead of time."""
    from fusile.backends import targets
    from fusile.dsl.errors import BackendError

    x = torch.randn(256, 128)
    cpu = targets.this_cpu()
    assert cpu.hbm_tb_s > 0 and cpu.fp32_tflops > 0 and cpu.compute_units >= 1
    for target in ("mlir-cpu", "auto"):
        ex = samples.softmax_last.explain(x, target=target)
        text = str(ex)
        assert text.startswith("softmax_last on mlir-cpu") and "measured through torch" in text
        (k,) = ex.kernels
        assert k.bytes == 2 * 256 * 128 * 4  # one read, one write
        # A slow or busy CPU (CI's two cores) can make softmax's exps the bound, not the bytes.
        t_mem, t_flop = k.bytes / (cpu.hbm_tb_s * 1e12), k.flops / (cpu.fp32_tflops * 1e12)
        assert k.roofline_us == pytest.approx(1e6 * max(t_mem, t_flop))
        assert k.bound == ("memory" if t_mem >= t_flop else "compute")
    with pytest.raises(BackendError, match="nothing to compile"):
        cpu.gpu_target()
