"""Issue 21's table in one run: the memory-bound stdlib ops at the shapes where peers fall off,
fusile against torch eager, torch.compile and Liger-Kernel (where installed), forward and
forward+backward, bf16, with the copy ceiling measured in the same run.

    python -m benchmarks.bench_memory_bound [--ops rms_norm,softmax] [--shapes 512x262144]
                                            [--no-compile] [--json PATH]

GB/s counts the fused floor as bench_stdlib does (forward: each input read and each output
written once; backward: the output gradient and the saved inputs read, each input gradient
written). "% copy" divides it by a device copy's read+write rate; "peer / fusile" is the best
peer's time over fusile's (above 1: fusile is faster). `--device cpu` runs the script's logic
at tiny sizes with a wall-clock timer (a smoke test; no figure from it means anything).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from benchmarks.bench_autodiff import liger_ops as autodiff_liger_ops
from benchmarks.bench_stdlib import OPS, nbytes

# issue 21: its table's rows, then rms_norm/layer_norm/softmax/cross_entropy at 16384x8192
# and 1024x131072
SHAPES = {
    "rms_norm": ["16384x4096", "4096x32768", "512x262144", "16384x8192", "1024x131072"],
    "layer_norm": ["16384x4096", "4096x32768", "512x262144", "16384x8192", "1024x131072"],
    "softmax": ["512x262144", "16384x8192", "1024x131072"],
    "add_rms_norm": ["16384x4096"],
    "swiglu": ["8192x14336"],
    "cross_entropy": ["8192x128256", "4096x256000", "16384x8192", "1024x131072"],
}


def liger_ops() -> dict[str, Any]:
    """Liger-Kernel's versions of the ops (an optional benchmark dependency): {} without it.
    bench_autodiff's four, and its fused add + RMSNorm and cross-entropy (timed from Python
    here, so its host read-back does not matter)."""
    ops = autodiff_liger_ops()
    if not ops:
        return {}
    from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction
    from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction

    return ops | {
        "add_rms_norm": lambda x, r, w: LigerFusedAddRMSNormFunction.apply(x, r, w, 1e-6),
        "cross_entropy": lambda x, t: LigerCrossEntropyFunction.apply(x, t, None)[0],
    }


def inputs_for(kind: str, m: int, n: int, device: str) -> list[torch.Tensor]:
    """Fresh random inputs (never zeros): rows x columns for x/r, columns for w/b, class
    indices for t."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    out = []
    for k in kind:
        if k in "xr":
            out.append(torch.randn(m, n, device=device, dtype=dtype))
        elif k in "wb":
            out.append(torch.randn(n, device=device, dtype=dtype))
        else:
            out.append(torch.randint(0, n, (m,), device=device))
    return out


def timed(fn: Any, inputs: list[torch.Tensor], backward: bool, device: str) -> float | None:
    """Median ms of fn (with its backward); None where the implementation refuses the shape."""
    leaves = [t.detach().clone().requires_grad_(t.dtype.is_floating_point) for t in inputs]
    try:
        if backward:
            out = fn(*leaves)
            grads = [torch.randn_like(o) for o in (out if isinstance(out, tuple) else (out,))]

            def call() -> None:
                o = fn(*leaves)
                torch.autograd.backward(o if isinstance(o, tuple) else (o,), grads)
                for t in leaves:
                    t.grad = None
        else:
            def call() -> None:
                with torch.no_grad():
                    fn(*leaves)
        call()
        if device != "cuda":
            t0 = time.perf_counter()
            call()
            return (time.perf_counter() - t0) * 1e3
        from triton.testing import do_bench

        return do_bench(call, warmup=100, rep=400, return_mode="median")
    except Exception as err:  # Liger's row limit, a compile failure: a gap in the table
        print(f"    ({type(err).__name__}: {str(err).splitlines()[0][:100]})", file=sys.stderr)
        return None


def copy_ceiling(device: str) -> float:
    """Bytes read + written per second by a device copy of 1 GiB (bf16)."""
    if device != "cuda":
        return float("nan")
    from triton.testing import do_bench

    src = torch.randn(1 << 29, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * (1 << 29) * 2 / (ms * 1e-3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default=",".join(SHAPES), help="comma-separated stdlib ops")
    ap.add_argument("--shapes", default="", help="rows x columns, comma-separated (default: "
                    "each op's shapes from issue 21)")
    ap.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test")
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench_memory_bound needs a CUDA GPU (or --device cpu for a smoke test)",
              file=sys.stderr)
        return 2
    liger = liger_ops() if a.device == "cuda" else {}
    ceiling = copy_ceiling(a.device)
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu (smoke test)"
    print(f"{name}, torch {torch.__version__}; copy ceiling {ceiling / 1e9:.0f} GB/s; "
          f"Liger {'yes' if liger else 'not installed'}")
    print(f"{'op':<14}{'shape':<13}{'pass':<9}{'fusile ms':>10}{'% copy':>8}{'eager':>9}"
          f"{'compile':>9}{'Liger':>9}  {'peer / fusile':>13}")
    rows = []
    for op in a.ops.split(","):
        fus, ref, kind = OPS[op]
        comp = None if a.no_compile or a.device != "cuda" else torch.compile(ref, dynamic=False)
        for shape in (a.shapes.split(",") if a.shapes else SHAPES[op]):
            m, n = (int(v) for v in shape.split("x"))
            if a.device != "cuda":
                m, n = max(1, m >> 10), max(2, n >> 10)
            inputs = inputs_for(kind, m, n, a.device)
            with torch.no_grad():
                out = fus(*inputs)
            outs = list(out) if isinstance(out, tuple) else [out]
            floats = [t for t in inputs if t.dtype.is_floating_point]
            fwd_bytes = nbytes(inputs) + nbytes(outs)
            for backward in (False, True):
                impls = {"fusile": fus, "eager": ref, "compile": comp, "liger": liger.get(op)}
                ms = {k: timed(f, inputs, backward, a.device) if f is not None else None
                      for k, f in impls.items()}
                nb = fwd_bytes + (nbytes(outs) + 2 * nbytes(floats) if backward else 0)
                peers = [v for k, v in ms.items() if k != "fusile" and v is not None]
                f_ms = ms["fusile"]
                pct = 100 * nb / (f_ms * 1e-3) / ceiling if f_ms else float("nan")
                ratio = min(peers) / f_ms if peers and f_ms else float("nan")
                cells = "".join(f"{v:9.3f}" if v is not None else f"{'-':>9}"
                                for v in (ms["eager"], ms["compile"], ms["liger"]))
                pass_ = "fwd+bwd" if backward else "fwd"
                print(f"{op:<14}{shape:<13}{pass_:<9}"
                      f"{f_ms if f_ms is not None else float('nan'):10.3f}{pct:7.0f}%{cells}"
                      f"  {ratio:13.2f}", flush=True)
                rows.append({"op": op, "shape": shape, "pass": pass_, "bytes": nb, **{
                    f"{k}_ms": v for k, v in ms.items()}, "pct_copy": pct,
                    "peer_over_fusile": ratio})
            del inputs, out, outs, floats
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": name, "copy_bytes_s": ceiling, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
