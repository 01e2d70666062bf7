"""Sweep the launch configuration of rows+columns kernels (a norm backward's dx with dw, db:
codegen_columns.py) at one size: rows per block, block length, warps and persistent programs
per SM, with each step's time and its kernels' registers and spills. Each configuration's
results are first checked against torch in float64.

    python -m benchmarks.sweep_columns [--size 4096x32768] [--ops rms_norm,layer_norm]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import sys

import torch
from triton.testing import do_bench_cudagraph

from benchmarks.bench_autodiff import OPS, leaf_inputs
from benchmarks.bench_step import step_fn
from fusile import config
from fusile.backends.triton import schedule


def _grads(f, inputs: list[torch.Tensor], dy: torch.Tensor) -> tuple:
    y = f(*inputs)
    return torch.autograd.grad(y, [t for t in inputs if t.requires_grad], dy)


def _forget() -> None:
    """Drop every program's cached configs: the next call picks again."""
    from fusile.backends.triton.runtime import TritonProgram

    for o in gc.get_objects():
        if type(o) is TritonProgram:
            for launch in o.launches:
                launch.configs.clear()


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="4096x32768", help="rows x columns")
    ap.add_argument("--ops", default="rms_norm,layer_norm")
    ap.add_argument("--tiles", default="1x4096,1x2048,2x2048,4x1024,4x2048,8x1024,8x512",
                    help="rows x block length of the looped variant's tile")
    ap.add_argument("--warps", default="8,16")
    ap.add_argument("--programs", default="1,2,4", help="persistent programs per SM")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("sweep_columns: needs a CUDA or ROCm GPU", file=sys.stderr)
        return 2
    m, n = (int(v) for v in a.size.split("x"))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {m}x{n} bf16 fwd+bwd, "
          "CUDA graph ms")
    with config.override(fast_launch=False):  # no recorded launches: each call picks again
        _sweep(a, m, n)
    return 0


def _sweep(a: argparse.Namespace, m: int, n: int) -> None:
    orig = schedule.reduction
    for name in a.ops.split(","):
        derived, _hand, ref, kind = OPS[name]
        inputs = leaf_inputs(kind, m, n)
        dy = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        want = _grads(ref, inputs, dy)
        tiles = [tuple(int(v) for v in s.split("x")) for s in a.tiles.split(",")]
        for (bp, br), warps, g in itertools.product(
                tiles, [int(w) for w in a.warps.split(",")],
                [int(p) for p in a.programs.split(",")]):
            cfg = schedule.Config(bp, br, warps, 1, True)

            def pick(p, r, target, eb, contiguous=True, columns=False, cfg=cfg):
                return cfg if columns else orig(p, r, target, eb, contiguous, columns)

            schedule.reduction = pick
            try:
                with config.override(row_programs=g):
                    _forget()
                    got = _grads(derived, inputs, dy)
                    errs = max(_err(x, w) for x, w in zip(got, want, strict=True))
                    ms = do_bench_cudagraph(step_fn(derived, inputs), rep=100)
                print(f"{name:<11} P={bp:<2} R={br:<5} w={warps:<3} G/SM={g}  {ms:7.3f} ms  "
                      f"max rel err {errs:.1e}", flush=True)
            except Exception as exc:  # a config that does not compile is a result too
                print(f"{name} P={bp} R={br} w={warps} G={g}: {type(exc).__name__} "
                      f"{str(exc)[:120]}", flush=True)
            finally:
                schedule.reduction = orig


if __name__ == "__main__":
    sys.exit(main())
