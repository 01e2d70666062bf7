"""Why is stdlib cross_entropy forward+backward slower launched than replayed? (benchmarks/
bench_step.py measured 0.725 ms eager against 0.351 ms from a CUDA graph at 16384x4096 bf16,
where the other stdlib ops are within 5% of their graphs.) Splits the step: target check on
and off, reduction 'none' plus a torch sum against 'mean', torch's own op; for each, eager
(do_bench), graph (do_bench_cudagraph) and the host time of 20 steps without a sync; then
whether the kernels' calls replay, a cProfile of 50 steps' host time by Python function and
a torch.profiler table of five steps.

    python -m benchmarks.profile_cross_entropy [--size 16384x4096]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench, do_bench_cudagraph

import fusile.stdlib as S
from fusile.stdlib import kernels as K


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="split the stdlib cross-entropy step: eager, "
                                 "CUDA graph and host time per variant")
    ap.add_argument("--size", default="16384x4096", help="rows x classes (default 16384x4096)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_cross_entropy: needs a CUDA or ROCm GPU", file=sys.stderr)
        return 2
    m, n = (int(v) for v in a.size.split("x"))
    x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    t = torch.randint(0, n, (m,), device="cuda")
    variants = {
        "default": lambda: S.cross_entropy(x, t),
        "no check": lambda: S.cross_entropy(x, t, check_targets=False),
        "none + sum": lambda: S.cross_entropy(x, t, reduction="none",
                                              check_targets=False).sum(),
        "torch": lambda: F.cross_entropy(x, t),
    }
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {m}x{n} bf16 fwd+bwd")
    for name, f in variants.items():
        def step(f=f) -> None:
            torch.autograd.grad(f(), [x])

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        eager = do_bench(step, warmup=50, rep=200, return_mode="median")
        graph = do_bench_cudagraph(step, rep=200, return_mode="median")
        t0 = time.perf_counter()
        for _ in range(20):
            step()
        host = (time.perf_counter() - t0) / 20 * 1e6
        torch.cuda.synchronize()
        print(f"{name:12s} eager {eager:.3f} ms  graph {graph:.3f} ms  host {host:.0f} us/step")
    backwards = [bwd for hit in K.cross_entropy_fwd._fast.values()
                 for d in hit.compiled.grads.values() if hasattr(d, "backwards")
                 for _, bwd in d.backwards.values()]  # the derived backward (autograd.py)
    for fn in (K.cross_entropy_fwd, *backwards):
        for hit in fn._fast.values():
            print(f"{fn.__name__}: replayed={hit.replay is not None} tries={hit.tries}")
    import cProfile
    import pstats

    host = cProfile.Profile()  # where the host time of a step goes, by Python function
    host.enable()
    for _ in range(50):
        torch.autograd.grad(S.cross_entropy(x, t), [x])
    host.disable()
    torch.cuda.synchronize()
    pstats.Stats(host).sort_stats("tottime").print_stats(22)
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                              torch.profiler.ProfilerActivity.CUDA])
    with prof:
        for _ in range(5):
            torch.autograd.grad(S.cross_entropy(x, t), [x])
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    sys.exit(main())
