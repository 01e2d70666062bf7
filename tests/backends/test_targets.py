"""Targets: the lent GPU's part picks its own numbers (an H200 is not an H100 for the roofline
and the tuner's table), and every named target cross-compiles."""

from __future__ import annotations

import types

import pytest
import torch

import fusile
from fusile import bf16, i64, samples
from fusile.backends import targets


@pytest.mark.parametrize("name,major,minor,expected", [
    ("NVIDIA H200", 9, 0, "h200"),
    ("NVIDIA H100 80GB HBM3", 9, 0, "h100"),
    ("NVIDIA GH200 480GB", 9, 0, "h100"),  # not an H200 by name: the architecture decides
    ("NVIDIA A100-SXM4-80GB", 8, 0, "a100"),
    ("NVIDIA L4", 8, 9, "sm89"),
])
def test_the_device_name_picks_the_part(monkeypatch: pytest.MonkeyPatch, name: str, major: int,
                                        minor: int, expected: str) -> None:
    props = types.SimpleNamespace(name=name, major=major, minor=minor,
                                  multi_processor_count=58)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: props)
    monkeypatch.setattr(torch.version, "hip", None)
    assert targets.for_device("cuda").name == expected


def test_h200_has_its_own_bandwidth_and_compiles_like_an_h100() -> None:
    h200, h100 = targets.get("h200"), targets.get("h100")
    assert (h200.hbm_tb_s, h100.hbm_tb_s) == (4.8, 3.35)
    assert (h200.arch, h200.compute_units) == (h100.arch, h100.compute_units)
    x, w = torch.randn(64, 256), torch.randn(256)
    assert "4.8 TB/s" in str(samples.rms_norm.explain(x, w, target="h200"))
    art = samples.rms_norm.compile("h200", x=bf16["M", 256], weight=bf16[256])
    assert art.kernels and all(k.spills == 0 for k in art.kernels)


def test_a_parameter_named_target_compiles_ahead_of_time() -> None:
    """compile()'s target is positional only: a cross-entropy's `target` is a parameter."""
    fn = fusile.from_source("def f(logits, target):\n"
                            "    hit = where(index(logits, 1) == target[:, None], logits, 0.0)\n"
                            "    return logsumexp(logits, axis=-1) - sum(hit, axis=-1)\n")
    art = fn.compile("h100", logits=bf16["M", 1000], target=i64["M"])
    assert art.kernels and all(k.spills == 0 for k in art.kernels)


def test_explain_defaults_to_the_tensors_gpu_else_h100() -> None:
    x, w = torch.randn(64, 256), torch.randn(256)
    assert " on h100 " in str(samples.rms_norm.explain(x, w))  # CPU tensors: the usual GPU
    # auto: what the tensors' device runs, here mlir-cpu on this CPU (the Triton interpreter
    # when named: target="cpu")
    assert " on mlir-cpu " in str(samples.rms_norm.explain(x, w, target="auto"))
    assert " on cpu " in str(samples.rms_norm.explain(x, w, target="cpu"))
