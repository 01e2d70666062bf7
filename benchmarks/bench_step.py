"""Is a stdlib forward+backward step bound by the host? Each op's step (forward, then
torch.autograd.grad of its output against every float input) timed as launched from Python
(eager, do_bench median) and as a CUDA graph replay (do_bench_cudagraph: the same kernels,
no host time). Eager within ~10% of the graph means the GPU, not the host, sets the pace.

    python -m benchmarks.bench_step [--size 16384x4096] [--ops a,b] [--json PATH]

Run it in three fresh processes before quoting a figure (host time moves with the process).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from triton.testing import do_bench, do_bench_cudagraph

from benchmarks.bench_stdlib import OPS, make


def step_fn(fn, inputs: list[torch.Tensor]):
    floats = [t for t in inputs if t.dtype.is_floating_point and t.requires_grad]
    out = fn(*inputs)
    main = out[0] if isinstance(out, tuple) else out
    grad = torch.randn_like(main) if main.dim() else torch.ones_like(main)

    def step() -> None:
        y = fn(*inputs)
        y = y[0] if isinstance(y, tuple) else y
        torch.autograd.grad(y, floats, grad)

    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="stdlib fwd+bwd: eager against a CUDA graph")
    ap.add_argument("--size", default="16384x4096", help="rows x columns (default 16384x4096)")
    ap.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_step: needs a CUDA or ROCm GPU", file=sys.stderr)
        return 2
    m, n = (int(v) for v in a.size.split("x"))
    names = [o for o in a.ops.split(",") if o] or list(OPS)
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {m}x{n} bf16 fwd+bwd")
    print(f"{'op':16s} {'eager ms':>9s} {'graph ms':>9s} {'eager/graph':>11s} {'torch ms':>9s}")
    for name in names:
        fn, ref, kind = OPS[name]
        torch.manual_seed(0)
        inputs = make(kind, m, n)
        if name == "rope":  # (batch*heads=32, seq, head_dim=128), same element count
            inputs[0] = inputs[0].view(32, -1, 128)
        for t in inputs:
            if (t.dtype.is_floating_point and name != "rope") or t is inputs[0]:
                t.requires_grad_()
        times = []
        for f in (fn, ref):
            step = step_fn(f, inputs)
            for _ in range(3):
                step()  # compile and tune outside the timings
            times.append(do_bench(step, warmup=50, rep=200, return_mode="median"))
            if f is fn:
                times.append(do_bench_cudagraph(step, rep=200, return_mode="median"))
        eager, graph, torch_ms = times
        rows.append({"op": name, "size": a.size, "eager_ms": eager, "graph_ms": graph,
                     "torch_eager_ms": torch_ms})
        print(f"{name:16s} {eager:9.3f} {graph:9.3f} {eager / graph:11.2f} {torch_ms:9.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
