"""Shared test settings: the Hypothesis profiles, a GPU marker that skips cleanly, and the
CPU target each test directory runs on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# CPU tensors run on mlir-cpu by default; the tests of the Triton kernels themselves (the
# backends', the stdlib's, the property suite's) run them on the Triton interpreter
# (FUSILE_TARGET=cpu), CI's only way to execute them without a GPU. A test that names a
# target (tests/backends/test_mlir_cpu.py, the property suite's mlir-cpu pass) gets it.
_INTERPRETED = {"backends", "stdlib", "property"}
_TESTS = Path(__file__).resolve().parent

settings.register_profile("ci", max_examples=60, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
# dev and deep draw fresh programs: a failure prints the @reproduce_failure blob that replays
# it (the example database is per checkout, and a deleted one loses it)
settings.register_profile("dev", max_examples=30, deadline=None, print_blob=True)
settings.register_profile("deep", max_examples=2000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA or ROCm GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _cpu_target(request: pytest.FixtureRequest) -> Iterator[None]:
    path = Path(str(request.node.path)).resolve()
    under = path.relative_to(_TESTS).parts[0] if path.is_relative_to(_TESTS) else ""
    if under in _INTERPRETED and "gpu" not in request.node.keywords:
        from fusile import config

        with config.override(target="cpu"):
            yield
    else:
        yield
