"""Sweep launch configurations for the memory-bound programs, with each kernel's registers,
to find out why a row misses the copy ceiling (occupancy, bytes in flight, ...).

    python -m benchmarks.sweep_rows
"""

from __future__ import annotations

import itertools
import sys

import torch

from fusile import samples
from fusile.backends.triton import schedule

CASES = [("rms_norm", 16384, 4096), ("layer_norm", 16384, 4096), ("logsumexp", 16384, 4096),
         ("logsumexp", 4096, 32768), ("layer_norm", 4096, 32768)]


def run(name: str, m: int, n: int, cfgs: list[schedule.Config], pointwise: bool = False) -> None:
    from triton.testing import do_bench

    fn, _ref, args = samples.cases(m, n, torch.bfloat16, "cuda")[name]
    nbytes = fn.plan(*args).bytes
    orig = schedule.pointwise if pointwise else schedule.reduction
    for cfg in cfgs:
        def fixed(*a, cfg=cfg, **k):
            return cfg

        if pointwise:
            schedule.pointwise = fixed
        else:
            schedule.reduction = fixed
        try:
            fn(*args)
            for launch in next(iter(fn.compiled(*args).programs.values())).launches:
                launch.configs.clear()  # the runtime caches a config per size: drop it
            fn(*args)
            torch.cuda.synchronize()
            ms = do_bench(lambda: fn(*args), warmup=25, rep=150, return_mode="median")
            prog = next(iter(fn.compiled(*args).programs.values()))
            kern = prog.launches[0].fn["looped" if cfg.looped else "main"]
            regs = "?"
            try:
                for c in kern.device_caches.values():
                    for ck in c[0].values():
                        if ck.metadata.num_warps == cfg.num_warps:
                            regs = f"{ck.n_regs}r/{ck.n_spills}s"
            except Exception:  # the JIT cache layout differs between Triton versions
                pass
            print(f"{name:<11} {m}x{n:<6} P={cfg.block_p:<3} R={cfg.block_r:<6} "
                  f"w={cfg.num_warps:<3} {nbytes / ms / 1e6:7.0f} GB/s  {regs}", flush=True)
        except Exception as exc:  # a config that does not compile is a result too
            print(f"{name} {cfg}: {type(exc).__name__} {str(exc)[:100]}")
        finally:
            schedule.pointwise, schedule.reduction = (
                (orig, schedule.reduction) if pointwise else (schedule.pointwise, orig))


def main() -> int:
    for name, m, n in CASES:
        r = min(n, 32768)
        cfgs = [schedule.Config(bp, r, w, 1, False)
                for bp, w in itertools.product([1, 2], [4, 8, 16, 32]) if bp * r <= 32768]
        run(name, m, n, cfgs)
    col = [schedule.Config(bp, br, w, 1, True)
           for bp, br, w in itertools.product([16, 32, 64], [128, 512], [4, 8, 16])]
    run("colsum_scale", 16384, 4096, col)
    pw = [schedule.Config(bp, bc, w, 1, False)
          for bp, bc, w in itertools.product([1, 4], [1024, 2048], [2, 4, 8])]
    run("gelu_bias", 16384, 4096, pw, pointwise=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
