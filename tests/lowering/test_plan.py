"""Plans (lowering/partition.py and report.py): which ops share a kernel, and the HBM bytes
each kernel reads and writes."""

from __future__ import annotations

import pytest

from fusile import samples

PROGRAMS = list(samples.cases(2, 8))


@pytest.mark.parametrize("name", PROGRAMS)
def test_each_program_is_one_kernel(name: str) -> None:
    fn, _ref, args = samples.cases(4, 64)[name]
    report = fn.plan(*args)
    assert len(report.kernels) == 1, str(report)
    assert report.bytes < report.unfused_bytes or report.unfused_kernels == 1


def test_plan_counts_hbm_bytes() -> None:
    fn, _ref, args = samples.cases(8, 1024)["add_rms_norm"]
    report = fn.plan(*args)
    (k,) = report.kernels
    # reads x, residual (8x1024 f32) and weight (1024 f32); writes y and h
    assert k.reads == {"x": 32768, "residual": 32768, "weight": 4096}
    assert sorted(k.writes.values()) == [32768, 32768]
    assert "h = x + residual" in str(report)
