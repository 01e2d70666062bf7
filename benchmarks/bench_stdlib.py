"""fusile.stdlib against torch eager and torch.compile: forward and forward+backward, bf16.

    python -m benchmarks.bench_stdlib [--ops a,b] [--sizes 16384x4096,...] [--json PATH]

GB/s counts the fused floor: forward reads each input once and writes each output once;
backward reads the output gradient and the saved inputs once and writes each input gradient
once. Cross-entropy runs at 8192 tokens x 128256 classes.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

import fusile.stdlib as S

OPS = {  # name -> (fusile fn, torch fn, number of float inputs, extra)
    "softmax": (lambda x: S.softmax(x, -1), lambda x: torch.softmax(x, -1), "x"),
    "log_softmax": (lambda x: S.log_softmax(x, -1), lambda x: torch.log_softmax(x, -1), "x"),
    "layer_norm": (lambda x, w, b: S.layer_norm(x, x.shape[-1:], w, b),
                   lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b), "xwb"),
    "rms_norm": (lambda x, w: S.rms_norm(x, x.shape[-1:], w, 1e-6),
                 lambda x, w: F.rms_norm(x, x.shape[-1:], w, 1e-6), "xw"),
    "add_rms_norm": (lambda x, r, w: S.add_rms_norm(x, r, x.shape[-1], w, 1e-6),
                     lambda x, r, w: (F.rms_norm(x + r, x.shape[-1:], w, 1e-6), x + r), "xrw"),
    "gelu": (lambda x: S.gelu(x), lambda x: F.gelu(x), "x"),
    "gelu_tanh": (lambda x: S.gelu(x, "tanh"), lambda x: F.gelu(x, approximate="tanh"), "x"),
    "silu": (lambda x: S.silu(x), lambda x: F.silu(x), "x"),
    "swiglu": (lambda a, b: S.swiglu(a, b), lambda a, b: F.silu(a) * b, "xr"),
    "geglu": (lambda a, b: S.geglu(a, b), lambda a, b: F.gelu(a) * b, "xr"),
    "cross_entropy": (lambda x, t: S.cross_entropy(x, t), lambda x, t: F.cross_entropy(x, t),
                      "xt"),
    "rope": (lambda x, c, s: S.rope(x, c.detach(), s.detach()),
             lambda x, c, s: x * c.detach() + _rotate_half(x) * s.detach(),
             "xcs"),
}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


def make(kind: str, m: int, n: int) -> list[torch.Tensor]:
    out = []
    for k in kind:
        if k in "xr":
            out.append(torch.randn(m, n, device="cuda", dtype=torch.bfloat16))
        elif k in "cs":  # rope tables: (seq, head_dim) for x viewed as (batch*heads, seq, 128)
            out.append(torch.randn(m * n // 128 // 32, 128, device="cuda", dtype=torch.bfloat16))
        elif k in "wb":
            out.append(torch.randn(n, device="cuda", dtype=torch.bfloat16))
        else:
            out.append(torch.randint(0, n, (m,), device="cuda"))
    return out


def nbytes(ts: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def time_ms(fn, inputs: list[torch.Tensor], backward: bool) -> float:
    from triton.testing import do_bench

    leaves = [t.requires_grad_() if t.dtype.is_floating_point else t for t in inputs]
    if not backward:
        with torch.no_grad():
            fn(*leaves)
            return do_bench(lambda: fn(*leaves), warmup=250, rep=600, return_mode="median")
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = [torch.randn_like(o) for o in outs]

    def step() -> None:
        o = fn(*leaves)
        torch.autograd.backward(o if isinstance(o, tuple) else (o,), grads)

    step()
    return do_bench(step, warmup=250, rep=600, grad_to_none=[t for t in leaves if
                                                            t.dtype.is_floating_point],
                    return_mode="median")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--sizes", default="16384x4096,16384x8192,4096x32768")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"{'op':<14}{'size':<13}{'pass':<9}{'fusile ms':>10}{'GB/s':>7}{'eager ms':>10}"
          f"{'compile ms':>11}{'speedup vs compile':>19}")
    for name in args.ops.split(","):
        fus, ref, kind = OPS[name]
        sizes = ["8192x128256"] if name == "cross_entropy" else args.sizes.split(",")
        for size in sizes:
            m, n = (int(v) for v in size.split("x"))
            inputs = make(kind, m, n)
            if name == "rope":  # (batch*heads=32, seq, head_dim=128), same element count
                inputs[0] = inputs[0].view(32, -1, 128)
            floats = [t for t in inputs if t.dtype.is_floating_point]
            with torch.no_grad():
                out = fus(*inputs)
            outs = list(out) if isinstance(out, tuple) else [out]
            fwd_bytes = nbytes(inputs) + nbytes(outs)
            bwd_bytes = nbytes(outs) + 2 * nbytes(floats)
            comp = None if args.no_compile else torch.compile(ref, dynamic=False)
            for backward in (False, True):
                r = {"op": name, "size": size, "pass": "fwd+bwd" if backward else "fwd"}
                nb = fwd_bytes + (bwd_bytes if backward else 0)
                r["fusile_ms"] = time_ms(fus, [t.detach().clone() for t in inputs], backward)
                r["eager_ms"] = time_ms(ref, [t.detach().clone() for t in inputs], backward)
                r["compile_ms"] = (time_ms(comp, [t.detach().clone() for t in inputs],
                                           backward) if comp else float("nan"))
                r["gbs"] = nb / (r["fusile_ms"] * 1e-3) / 1e9
                rows.append(r)
                print(f"{name:<14}{size:<13}{r['pass']:<9}{r['fusile_ms']:>10.3f}"
                      f"{r['gbs']:>7.0f}{r['eager_ms']:>10.3f}{r['compile_ms']:>11.3f}"
                      f"{r['compile_ms'] / r['fusile_ms']:>19.2f}", flush=True)
            torch._dynamo.reset()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
