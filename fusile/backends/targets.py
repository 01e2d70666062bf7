"""Named targets and their numbers. Adding a target is adding a row here (and, where its
tuning differs, a rule in backends/triton/schedule.py)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from fusile.dsl.errors import BackendError


@dataclass(frozen=True)
class Target:
    name: str
    backend: str  # "cuda" | "hip" | "interpreter" | "mlir-cpu"
    arch: int | str  # 90 for sm_90, "gfx942", ...
    warp_size: int
    compute_units: int  # SMs or CUs
    smem_kib: int  # shared memory / LDS per block usable by a kernel
    hbm_tb_s: float  # datasheet HBM bandwidth
    bf16_tflops: float  # dense bf16 matrix peak
    fp32_tflops: float  # fp32 vector peak

    @property
    def max_threads(self) -> int:
        return 1024

    @property
    def max_warps(self) -> int:
        return self.max_threads // self.warp_size

    @property
    def max_head_dim(self) -> int:
        """The widest head dim a flash kernel holds on chip (0: no limit; mlir-cpu has no flash
        kernels, the interpreter no limit unless set): FUSILE_MAX_HEAD_DIM, else 256 on a GPU,
        FlashAttention's own limit. A call with a wider one
        (a linear cross-entropy's hidden size, say) runs its program's plain plan, the scores
        through HBM: at 2048 the flash backward needed 320 KiB of shared memory on an H100
        (227 usable) and spilled 47 KB a thread."""
        from fusile import config

        if self.backend == "interpreter":
            return config.get("max_head_dim")
        if self.backend not in ("cuda", "hip"):
            return 0  # mlir-cpu runs no flash kernels
        return config.get("max_head_dim") or 256

    def gpu_target(self) -> Any:
        from triton.backends.compiler import GPUTarget

        if self.backend in ("interpreter", "mlir-cpu"):
            raise BackendError(f"the {self.name} target runs on this CPU; nothing to compile "
                               "ahead of time for a GPU")
        return GPUTarget(self.backend, self.arch, self.warp_size)

    def describe(self) -> str:
        if self.backend == "mlir-cpu":
            return (f"{self.name:<8} MLIR's JIT on this CPU, the default for CPU tensors: "
                    f"{self.compute_units} cores, {self.warp_size} threads, copy "
                    f"{self.hbm_tb_s * 1e3:.1f} GB/s and fp32 matmul {self.fp32_tflops * 1e3:.0f}"
                    " GFLOP/s (measured now); vectorised loops, large row-separable calls in "
                    "blocks of rows on the threads")
        if self.backend == "interpreter":
            return (f"{self.name:<8} Triton interpreter on the CPU: runs the Triton kernels "
                    "themselves (tests); FUSILE_TARGET=cpu")
        return (f"{self.name:<8} {self.backend} {self.arch}, warp {self.warp_size}, "
                f"{self.compute_units} CUs/SMs, {self.smem_kib} KiB smem/LDS, "
                f"{self.hbm_tb_s} TB/s, {self.bf16_tflops:g} bf16 TFLOP/s, flash head dims "
                f"up to {self.max_head_dim}")


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("h100", "cuda", 90, 32, 132, 227, 3.35, 989.0, 67.0),
    # the same GH100 die and clocks as the H100 SXM, with 141 GB of HBM3e at 4.8 TB/s
    Target("h200", "cuda", 90, 32, 132, 227, 4.8, 989.0, 67.0),
    Target("a100", "cuda", 80, 32, 108, 163, 2.04, 312.0, 19.5),
    Target("mi300x", "hip", "gfx942", 64, 304, 64, 5.3, 1307.0, 163.4),
    Target("mi250x", "hip", "gfx90a", 64, 220, 64, 3.2, 383.0, 47.9),
    Target("cpu", "interpreter", "cpu", 32, 1, 1024, 0.02, 0.0, 0.1),
]}


# a device name's part (a whole word: "GH200" is not "H200") -> its target, where an
# architecture has several (checked before the architecture alone)
_BY_NAME = [("H200", "h200"), ("H100", "h100"), ("A100", "a100")]


def get(name: str) -> Target:
    if name not in TARGETS:
        raise BackendError(f"unknown target {name!r}; known: {', '.join(TARGETS)} (or 'auto')")
    return TARGETS[name]


@functools.cache
def this_cpu() -> Target:
    """mlir-cpu's target: this machine's cores and threads, and its copy bandwidth and fp32
    matmul rate measured through torch (best of three; about 0.1 s, once per process). The
    threads stand where a GPU has its warp size."""
    import os

    copy, mm = _cpu_rates()
    return Target("mlir-cpu", "mlir-cpu", "cpu", cpu_threads(), os.cpu_count() or 1, 0, copy,
                  mm, mm)


@functools.cache
def _cpu_rates() -> tuple[float, float]:
    """This CPU's copy bandwidth and fp32 matmul rate in TB/s and TFLOP/s, measured once (a
    second measurement on a busy machine differs: explain's roofline would move with it)."""
    import time

    import torch

    def best(fn: Any) -> float:
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    x, y = torch.ones(1 << 24), torch.empty(1 << 24)
    copy = 2 * x.numel() * 4 / best(lambda: y.copy_(x)) / 1e12
    a = torch.ones(512, 512)
    return copy, 2 * 512**3 / best(lambda: a @ a) / 1e12


def cpu_threads() -> int:
    """The threads mlir-cpu runs a call's blocks of rows on: FUSILE_CPU_THREADS, else
    torch's."""
    from fusile import config

    threads = config.get("cpu_threads")
    if threads:
        return int(threads)
    import torch

    return torch.get_num_threads()


def for_device(device: Any) -> Target:
    """The target for a torch device ('auto')."""
    import torch

    dev = torch.device(device)
    if dev.type == "cpu":
        return TARGETS["cpu"]
    if dev.type != "cuda":
        raise BackendError(f"fusile cannot run on device {dev}")
    props = torch.cuda.get_device_properties(dev)
    if getattr(torch.version, "hip", None):
        arch = str(getattr(props, "gcnArchName", "")).split(":")[0]
        for t in TARGETS.values():
            if t.arch == arch:
                return t
        return Target(f"hip-{arch}", "hip", arch, 64, props.multi_processor_count, 64, 0.0,
                      0.0, 0.0)
    cap = props.major * 10 + props.minor
    name = str(getattr(props, "name", ""))
    for part, target in _BY_NAME:  # one architecture, several parts (H100, H200)
        if re.search(rf"\b{part}\b", name) and TARGETS[target].arch == cap:
            return TARGETS[target]
    for t in TARGETS.values():
        if t.arch == cap:
            return t
    return Target(f"sm{cap}", "cuda", cap, 32, props.multi_processor_count, 99, 0.0, 0.0, 0.0)
