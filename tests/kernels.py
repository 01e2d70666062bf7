"""Helpers of the tests that write a small DSL program and look at its kernels: the program
from source, fresh random float32 inputs, and the generated kernel sources."""

from __future__ import annotations

from typing import Any

import torch

import fusile


def program(src: str) -> fusile.FusedFunction:
    return fusile.from_source(src, filename="prog.py")


def rand(*shape: int, device: str = "cpu") -> torch.Tensor:
    """Fresh normal draws (float32, rounded from float64 so no two runs share them)."""
    return torch.randn(shape, dtype=torch.float64).float().to(device)


def kernel_sources(fn: fusile.FusedFunction, *args: Any) -> list[Any]:
    """The KernelSources the call's plan launches, as a GPU target generates them."""
    return fn.compiled(*args).triton("gpu", False)[1]
