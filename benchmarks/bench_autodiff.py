"""Derived backwards (autodiff of a user @fused forward) against the stdlib op's (hand-written,
but for cross-entropy, whose stdlib backward is derived too) and torch.compile's (and
Liger-Kernel's, where installed), forward+backward at one size, bf16, in one run.

Each row times the step `y = f(*inputs); torch.autograd.grad(y, float inputs, dy)` as a CUDA
graph replay (do_bench_cudagraph: kernel time, no host) and from Python (do_bench median).

    python -m benchmarks.bench_autodiff [--size 16384x4096] [--ops a,b] [--json PATH]
                                        [--kernels]

--kernels also lists each step's GPU kernels with their times (torch.profiler, one step after
warm-up) and the bytes moved at the measured copy ceiling: where a slow row loses its time.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench, do_bench_cudagraph

import fusile.stdlib as S
from benchmarks.bench_stdlib import make
from benchmarks.bench_step import step_fn
from fusile import erf, fused, index, logsumexp, mean, rsqrt, sigmoid, softmax, sum, where
from fusile.stdlib import kernels as K


@fused
def rms_norm(x, w, eps: float = 1e-6):
    return x * rsqrt(mean(x * x, axis=-1, keepdims=True) + eps) * w


@fused
def layer_norm(x, w, b, eps: float = 1e-5):
    xc = x - mean(x, axis=-1, keepdims=True)
    return xc * rsqrt(mean(xc * xc, axis=-1, keepdims=True) + eps) * w + b


@fused
def softmax_rows(x):
    return softmax(x, axis=-1)


@fused
def cross_entropy_rows(x, t):
    hit = where(index(x, 1) == t[:, None], x, 0.0)
    return logsumexp(x, axis=-1) - sum(hit, axis=-1)


@fused
def swiglu(a, b):
    return a * sigmoid(a) * b


@fused
def gelu(x):
    return 0.5 * x * (1.0 + erf(x * 0.7071067811865476))


OPS = {  # name -> (derived, stdlib (hand-written backward but for cross-entropy), torch,
       #          input kinds)
    "rms_norm": (rms_norm, lambda x, w: S.rms_norm(x, x.shape[-1:], w, 1e-6),
                 lambda x, w: F.rms_norm(x, x.shape[-1:], w, 1e-6), "xw"),
    "layer_norm": (layer_norm, lambda x, w, b: S.layer_norm(x, x.shape[-1:], w, b),
                   lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b), "xwb"),
    "softmax": (softmax_rows, lambda x: S.softmax(x, -1), lambda x: torch.softmax(x, -1), "x"),
    "cross_entropy": (lambda x, t: cross_entropy_rows(x, t).float().mean(),
                      lambda x, t: S.cross_entropy(x, t), lambda x, t: F.cross_entropy(x, t),
                      "xt"),
    # the stdlib's own forward (ignore_index, the count, the target check) run as a user
    # function (the Derived path: the forward writes what the backward keeps), against the
    # stdlib op. The op's backward is that same derivation since the hand-written one was
    # deleted (it was 0.176 ms, the derived 0.173, 16384x4096 bf16 on an H100); it reads
    # the forward's lse and count instead of an extra copy (autograd.op_gradients).
    "cross_entropy_stdlib": (lambda x, t: K.cross_entropy_fwd(x, t, -100, 0.0, 2)[0],
                             lambda x, t: S.cross_entropy(x, t),
                             lambda x, t: F.cross_entropy(x, t), "xt"),
    "swiglu": (swiglu, lambda a, b: S.swiglu(a, b), lambda a, b: F.silu(a) * b, "xr"),
    "gelu": (gelu, lambda x: S.gelu(x), lambda x: F.gelu(x), "x"),
}


def liger_ops() -> dict:
    """Liger-Kernel's versions of the ops, where it has them (an optional benchmark
    dependency: empty without it). Its rms_norm writes dx over dy (in_place): off, as the
    other rows keep dy. Its cross-entropy is left out: it reads a count back to the host
    (`.item()`), so its step cannot be captured as a CUDA graph."""
    try:
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.softmax import LigerSoftmaxFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    except ImportError:
        return {}
    return {
        "rms_norm": lambda x, w: LigerRMSNormFunction.apply(x, w, 1e-6, 0.0, "llama", False),
        "layer_norm": lambda x, w, b: LigerLayerNormFunction.apply(x, w, b, 1e-5),
        "softmax": lambda x: LigerSoftmaxFunction.apply(x),
        "swiglu": lambda a, b: LigerSiLUMulFunction.apply(a, b),
    }


def leaf_inputs(kind: str, m: int, n: int) -> list[torch.Tensor]:
    """An op's inputs (bench_stdlib.make, seed 0), the float ones requiring grad."""
    torch.manual_seed(0)
    inputs = make(kind, m, n)
    for t in inputs:
        if t.dtype.is_floating_point:
            t.requires_grad_()
    return inputs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="derived backward vs hand-written vs torch.compile")
    ap.add_argument("--size", default="16384x4096", help="rows x columns (default 16384x4096)")
    ap.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--kernels", action="store_true",
                    help="list each step's GPU kernels and their times")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_autodiff: needs a CUDA or ROCm GPU", file=sys.stderr)
        return 2
    m, n = (int(v) for v in a.size.split("x"))
    names = [o for o in a.ops.split(",") if o] or list(OPS)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {m}x{n} bf16 fwd+bwd, "
          "ms (CUDA graph / from Python)")
    liger = liger_ops()
    print(f"{'op':14s} {'derived':>15s} {'stdlib op':>15s} {'compile':>15s} "
          f"{'Liger':>15s} {'der/std':>8s} {'der/comp':>8s} {'der/Liger':>9s}")
    rows = []
    for name in names:
        derived, hand, ref, kind = OPS[name]
        inputs = leaf_inputs(kind, m, n)
        row: dict = {"op": name, "size": a.size}
        impls = [("derived", derived), ("hand", hand), ("compile", torch.compile(ref))]
        if name in liger:
            impls.append(("liger", liger[name]))
        for label, f in impls:
            step = step_fn(f, inputs)
            for _ in range(3):
                step()  # compile and tune outside the timings
            try:
                row[label + "_graph_ms"] = do_bench_cudagraph(step, rep=200,
                                                              return_mode="median")
            except RuntimeError as err:  # a peer that cannot be captured: say so, go on
                if label != "liger":
                    raise
                print(f"({name}: Liger's step is not capturable: {str(err)[:80]})")
                continue
            row[label + "_eager_ms"] = do_bench(step, warmup=50, rep=200, return_mode="median")
            if a.kernels:
                row[label + "_kernels"] = _kernels(step)
        rows.append(row)
        cells = [f"{row[k + '_graph_ms']:6.3f} /{row[k + '_eager_ms']:6.3f}"
                 if k + "_graph_ms" in row else "-" for k in ("derived", "hand", "compile",
                                                                 "liger")]
        vs_liger = f"{row['derived_graph_ms'] / row['liger_graph_ms']:9.2f}" \
            if "liger_graph_ms" in row else f"{'-':>9s}"
        print(f"{name:14s} {cells[0]:>15s} {cells[1]:>15s} {cells[2]:>15s} {cells[3]:>15s} "
              f"{row['derived_graph_ms'] / row['hand_graph_ms']:8.2f} "
              f"{row['derived_graph_ms'] / row['compile_graph_ms']:8.2f} {vs_liger}")
    if a.kernels:
        for row in rows:
            for label in ("derived", "hand", "compile", "liger"):
                if label + "_kernels" not in row:
                    continue
                print(f"  {row['op']} {label}:")
                for name, us in row[label + "_kernels"]:
                    print(f"    {us:8.1f} us  {name[:90]}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "rows": rows}, f, indent=1)
    return 0


def _kernels(step) -> list[tuple[str, float]]:
    """(kernel name, GPU microseconds) of one step, in launch order."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return [(e.name, e.device_time) for e in prof.events()
            if e.device_type.name == "CUDA" and e.device_time > 0]


if __name__ == "__main__":
    sys.exit(main())
