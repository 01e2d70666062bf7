"""The kernel kinds table (backends/triton/kinds/): which kind takes which kernel, and the
element size a row kernel's accesses are counted in."""

from __future__ import annotations

import torch

import fusile.samples as S
from fusile import fused
from fusile.backends.triton.kinds import kind_of, rows
from fusile.stdlib import kernels as K
from tests.kernels import kernel_sources as _kernels


def test_each_kernel_goes_to_the_kind_that_writes_it() -> None:
    x, w = torch.randn(8, 16, dtype=torch.bfloat16), torch.randn(16, 4, dtype=torch.bfloat16)
    assert kind_of(_kernels(S.linear_bias, x, w, w[0])[0]).name == "dot"
    q, k = torch.randn(5, 16), torch.randn(7, 16)
    assert [kind_of(k).name for k in _kernels(S.attention_plain, q, k, k)] == ["flash"]
    assert [kind_of(k).name for k in _kernels(S.rms_norm, x, x[0])] == ["rows"]

    @fused
    def int_matmul(a, b):
        return a @ b

    ai = torch.randint(-5, 5, (9, 7), dtype=torch.int32)
    assert [kind_of(k).name for k in _kernels(int_matmul, ai, ai.T.contiguous())] == ["rows"]


def test_row_accesses_count_the_row_tensors_not_the_per_row_ones() -> None:
    """A cross-entropy over bf16 logits reads int64 targets and writes float32 statistics,
    one per row: its rows are still read 8 bf16 elements to a 16-byte access (counting the
    targets gave 2 elements a thread, and 3x the time on an H100)."""
    logits = torch.randn(8, 4096, dtype=torch.bfloat16)
    target = torch.randint(0, 4096, (8,))
    ks = _kernels(K.cross_entropy_fwd, logits, target, -100, 0.0, 2)[0]  # then the mean
    assert ks.tensors[0].name == "logits" and rows.elem_bytes(ks) == 2
    x = torch.randn(8, 64, dtype=torch.float32)
    assert rows.elem_bytes(_kernels(S.rms_norm, x, x[0])[0]) == 4
