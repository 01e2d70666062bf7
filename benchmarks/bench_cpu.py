"""fusile on the CPU: MLIR's JIT (FUSILE_TARGET=mlir-cpu) and the Triton interpreter against
torch eager, in one run: small-call latency (8x64) and large rows (4096x4096), float32.

    python -m benchmarks.bench_cpu [--size 4096x4096] [--threads N]

mlir-cpu (backends/mlir_cpu.py) is timed with its default threads (torch's) and with one,
and so is torch eager, so the table says what threading and what code generation each
account for. The interpreter is timed at the small size only (it takes seconds at the
large one).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

import fusile.stdlib as L
from fusile import config


def _time(fn, seconds: float = 0.5) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n * 1e6  # us


def _ops(m: int, n: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(m, n, generator=g), torch.randn(m, n, generator=g)
    w, t = torch.randn(n, generator=g), torch.randint(0, n, (m,), generator=g)
    return {
        "rms_norm": (lambda: L.rms_norm(x, (n,), w, 1e-6),
                     lambda: F.rms_norm(x, (n,), w, 1e-6)),
        "softmax": (lambda: L.softmax(x, -1), lambda: torch.softmax(x, -1)),
        "swiglu": (lambda: L.swiglu(x, y), lambda: F.silu(x) * y),
        "cross_entropy": (lambda: L.cross_entropy(x, t), lambda: F.cross_entropy(x, t)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fusile on the CPU against torch eager")
    ap.add_argument("--size", default="4096x4096", help="the large size (default 4096x4096)")
    a = ap.parse_args(argv)
    m, n = (int(v) for v in a.size.split("x"))
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads; float32, microseconds per call")
    print(f"{'op':14s} {'size':>10s} {'mlir-cpu':>10s} {'mlir 1t':>10s} {'interp':>10s} "
          f"{'torch':>10s} {'torch 1t':>10s}")
    for size in ((8, 64), (m, n)):
        for name, (fus, ref) in _ops(*size).items():
            with config.override(target="mlir-cpu"):
                jit = _time(fus)
                with config.override(cpu_threads=1):
                    jit1 = _time(fus)
            with config.override(target="cpu"):
                interp = _time(fus) if size == (8, 64) else float("nan")
            eager = _time(ref)
            torch.set_num_threads(1)
            one = _time(ref)
            torch.set_num_threads(threads)
            print(f"{name:14s} {size[0]:>4d}x{size[1]:<5d} {jit:10.0f} {jit1:10.0f} "
                  f"{interp:10.0f} {eager:10.0f} {one:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
