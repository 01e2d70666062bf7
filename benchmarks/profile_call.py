"""Where the host time of a fused call goes: cProfile of many small calls on the GPU.

    python -m benchmarks.profile_call
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

import torch

from fusile import config, samples


def per_call_us(fn, *args, n: int = 3000) -> float:
    for _ in range(200):
        fn(*args)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn(*args)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> int:
    x = torch.randn(4, 128, device="cuda")
    fn = samples.softmax_last
    print(f"fused call, fast launch: {per_call_us(fn, x):.1f} us")
    with config.override(fast_launch=False):
        fn2 = samples.log_softmax_last
        print(f"fused call, JIT launch:  {per_call_us(fn2, x):.1f} us")
    import fusile.stdlib as S

    logits = torch.randn(4, 128, device="cuda")
    target = torch.randint(0, 128, (4,), device="cuda")
    for check in (True, False):  # the target check: a few small torch ops and an async assert
        us = per_call_us(S.cross_entropy, logits, target, -100, "mean", 0.0, check)
        print(f"stdlib cross_entropy, check_targets={check}: {us:.1f} us")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(2000):
        fn(x)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(14)
    return 0


if __name__ == "__main__":
    sys.exit(main())
