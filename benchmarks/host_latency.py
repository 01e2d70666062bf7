"""Host time per call of small ops (the GPU idles: every figure is what the host spends to
issue one call), fusile against the torch eager op doing the same math, with and without
autograd recording, and through torch.compile (where a user function is a custom op).

    python -m benchmarks.host_latency [--n 3000] [--json out.json]

Run it in two or three fresh processes before quoting a figure: host times move with the
process (allocator state, CPU frequency).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import fusile.stdlib as S
from fusile import samples


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """Median of 5 rounds of n back-to-back calls, in microseconds per call."""
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        rounds.append((time.perf_counter() - t0) / n * 1e6)
    return sorted(rounds)[2]


def rows(n: int) -> list[tuple[str, str, float, float]]:
    """(op, mode, torch us, fusile us)."""
    dev = "cuda"
    x = torch.randn(4, 128, device=dev, dtype=torch.bfloat16)
    w = torch.randn(128, device=dev, dtype=torch.bfloat16)
    xg = x.clone().requires_grad_()
    wg = w.clone().requires_grad_()
    t = torch.randint(0, 128, (4,), device=dev)
    out = []

    def add(op: str, mode: str, theirs: Callable[[], object], ours: Callable[[], object]):
        out.append((op, mode, per_call_us(theirs, n), per_call_us(ours, n)))

    with torch.no_grad():
        add("softmax", "no grad", lambda: torch.softmax(x, -1), lambda: S.softmax(x, -1))
        add("rms_norm", "no grad", lambda: F.rms_norm(x, (128,), w, 1e-6),
            lambda: S.rms_norm(x, 128, w, 1e-6))
        add("swiglu", "no grad", lambda: F.silu(x) * x, lambda: S.swiglu(x, x))
        add("cross_entropy", "no grad", lambda: F.cross_entropy(x, t),
            lambda: S.cross_entropy(x, t, check_targets=False))
        add("user softmax (@fused)", "no grad", lambda: torch.softmax(x, -1),
            lambda: samples.softmax_last(x))
        add("user rms_norm (@fused)", "no grad", lambda: F.rms_norm(x, (128,), w, 1e-6),
            lambda: samples.rms_norm(x, w, 1e-6))
    add("softmax", "grad", lambda: torch.softmax(xg, -1), lambda: S.softmax(xg, -1))
    add("rms_norm", "grad", lambda: F.rms_norm(xg, (128,), wg, 1e-6),
        lambda: S.rms_norm(xg, 128, wg, 1e-6))
    with torch.no_grad():
        theirs = torch.compile(lambda: torch.softmax(x, -1))
        ours = torch.compile(lambda: samples.softmax_last(x))
        add("user softmax, torch.compile", "no grad", theirs, ours)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="host time per call, fusile against torch eager")
    ap.add_argument("--n", type=int, default=3000, help="calls per round (default 3000)")
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("host_latency needs a GPU (it measures the cost of issuing GPU work)")
        return 2
    table = rows(a.n)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; 4x128 bf16")
    print(f"{'op':32} {'mode':8} {'torch us':>9} {'fusile us':>10} {'ratio':>6}")
    for op, mode, theirs, ours in table:
        print(f"{op:32} {mode:8} {theirs:9.1f} {ours:10.1f} {ours / theirs:6.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump([dict(op=o, mode=m, torch_us=t, fusile_us=u) for o, m, t, u in table], f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
