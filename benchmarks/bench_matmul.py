"""Contraction kernels: fusile against cuBLAS (torch.matmul), torch eager and torch.compile.

    python -m benchmarks.bench_matmul [--shapes 4096x4096x4096,...] [--json PATH]

Shapes are M x K -> N, bf16. Rows: the plain product (fusile vs torch.matmul), then
gelu(x @ w + b) and x @ w + b + res (fusile vs eager and torch.compile). TFLOP/s counts
2*M*N*K; the ceiling is the measured 799 bf16 TFLOP/s of an H100 SXM GEMM. The first fusile call
of each shape tunes (a line on stderr); the timing runs after it.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from fusile import fused
from fusile.stdlib.kernels import gelu_erf

CEILING_TFLOPS = 799.0
SHAPES = [(4096, 4096, 4096), (8192, 8192, 8192), (16384, 4096, 4096), (16384, 4096, 14336),
          (16384, 14336, 4096)]


@fused
def product(x, w):
    return x @ w


@fused
def linear_gelu(x, w, b):
    return gelu_erf(x @ w + b)


@fused
def linear_residual(x, w, b, res):
    return x @ w + b + res


def _eager_gelu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.gelu(x @ w + b)


def _eager_residual(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                    res: torch.Tensor) -> torch.Tensor:
    return x @ w + b + res


def _ms(fn: object) -> float:
    return float(do_bench(fn, warmup=50, rep=300, return_mode="median"))  # type: ignore[arg-type]


def _cases(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, res: torch.Tensor,
           compiled_gelu: object, compiled_res: object) -> dict[str, dict[str, object]]:
    cg, cr = compiled_gelu, compiled_res
    return {
        "x @ w": {"fusile": lambda: product(x, w), "cublas": lambda: torch.matmul(x, w)},
        "gelu(x @ w + b)": {"fusile": lambda: linear_gelu(x, w, b),
                            "eager": lambda: _eager_gelu(x, w, b),
                            "compile": lambda: cg(x, w, b)},  # type: ignore[operator]
        "x @ w + b + res": {"fusile": lambda: linear_residual(x, w, b, res),
                            "eager": lambda: _eager_residual(x, w, b, res),
                            "compile": lambda: cr(x, w, b, res)},  # type: ignore[operator]
    }


def run(shapes: list[tuple[int, int, int]]) -> list[dict]:
    rows = []
    compiled_gelu = torch.compile(_eager_gelu)
    compiled_res = torch.compile(_eager_residual)
    for m, k, n in shapes:
        torch.manual_seed(0)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(k, n, device="cuda", dtype=torch.bfloat16) / k**0.5
        b = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        res = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        flops = 2.0 * m * n * k
        cases = _cases(x, w, b, res, compiled_gelu, compiled_res)
        for op, fns in cases.items():
            for f in fns.values():
                f()  # type: ignore[operator]  # compile and tune outside the timing
            torch.cuda.synchronize()
            row: dict = {"op": op, "m": m, "k": k, "n": n}
            for name, f in fns.items():
                ms = _ms(f)
                row[f"{name}_ms"] = ms
                row[f"{name}_tflops"] = flops / ms / 1e9
            base = "cublas_ms" if "cublas_ms" in row else "compile_ms"
            row["ratio"] = row[base] / row["fusile_ms"]
            row["vs"] = base[:-3]
            rows.append(row)
            others = "  ".join(f"{k[:-7]} {v:6.1f}" for k, v in row.items()
                               if k.endswith("_tflops") and not k.startswith("fusile"))
            print(f"{op:<18} {m:>5}x{k:<5}->{n:<5}  fusile {row['fusile_tflops']:6.1f} TFLOP/s "
                  f"({row['fusile_tflops'] / CEILING_TFLOPS:4.0%} of {CEILING_TFLOPS:g})  "
                  f"{others}  fusile/{row['vs']} {row['ratio']:.2f}x", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", help="comma list of MxKxN (default: the issue's shapes)")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_matmul needs a CUDA GPU", file=sys.stderr)
        return 2
    shapes = SHAPES
    if a.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]  # type: ignore[misc]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = run(shapes)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
