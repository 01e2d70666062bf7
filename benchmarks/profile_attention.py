"""Host cost of a stdlib attention call, and what it does to do_bench's reading: per-call host
time of `attention()`, of the fused `attention_fwd` and of SDPA on a tiny shape (GPU time
negligible), a cProfile of the attention call, and at one benchmark shape the time do_bench
reports (an L2 flush then one call per sample: host time past the flush's length shows up as
GPU idle) beside back-to-back throughput (host time hidden behind the queue).

    python -m benchmarks.profile_attention [--d 64] [--seq 2048]

FUSILE_FAST_LAUNCH=0 turns off the cached launch and the replay, for an A/B.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from fusile.stdlib.attention import attention, attention_fwd


def per_call_us(fn, n: int = 2000) -> float:
    for _ in range(100):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def queued_ms(fn, n: int = 50) -> float:
    """Mean GPU time of n back-to-back calls (the host runs ahead of the GPU), after 250 ms
    of calls to bring the clocks up."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.25:
        fn()
        torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--seq", type=int, default=2048)
    a = p.parse_args()
    q, k, v = (torch.randn(1, 2, 128, 64, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    q5, k5, v5 = q[:, :, None], k[:, :, None], v[:, :, None]
    slopes = torch.ones(2, 1, device="cuda")
    lens = torch.ones(1, dtype=torch.int32, device="cuda")
    no_mask = torch.ones((1, 1, 1, 1, 1), dtype=torch.bool, device="cuda")
    scale = 1 / 8
    calls = {
        "attention()": lambda: attention(q, k, v),
        "attention_fwd (fused)": lambda: attention_fwd(q5, k5, v5, slopes, lens, no_mask,
                                                       scale, 0.0, False, 0, False, False,
                                                       False, False, False),
        "SDPA (default)": lambda: F.scaled_dot_product_attention(q, k, v),
    }
    for name, fn in calls.items():
        print(f"{name:<24} {per_call_us(fn):7.1f} us a call (host)")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(2000):
        attention(q, k, v)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(22)

    heads, batch = 2048 // a.d, max(1, 16384 // a.seq)
    q, k, v = (torch.randn(batch, heads, a.seq, a.d, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    flops = 4.0 * batch * heads * a.seq * a.seq * a.d
    print(f"\nd={a.d} seq={a.seq} non-causal: TFLOP/s by do_bench (median) and back-to-back")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        fns = {"fusile": lambda: attention(q, k, v),
               "flash": lambda: F.scaled_dot_product_attention(q, k, v)}
        for name, fn in fns.items():
            ms = do_bench(fn, warmup=250, rep=100, return_mode="median")
            qm = queued_ms(fn)
            print(f"  {name:<8} do_bench {flops / ms / 1e9:6.0f}  back-to-back "
                  f"{flops / qm / 1e9:6.0f}  (host gap {1e3 * (ms - qm):+.0f} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
