"""Linear cross-entropy (the LM head and its loss) forward+backward: fusile.stdlib against torch
eager, torch.compile and Liger-Kernel's fused linear cross-entropy, time and peak memory.

    python -m benchmarks.bench_linear_ce [--shape 8192,4096,128256] [--chunks 256,1024]
    python -m benchmarks.bench_linear_ce --forward   # the loss alone (evaluation)

bf16, mean reduction, input (tokens, hidden) and weight (vocab, hidden) both needing
gradients. Each step is `loss = f(h, w, y); torch.autograd.grad(loss, (h, w))`; time is
do_bench's median, "peak" the step's peak allocation above what was allocated before it
(inputs excluded), and TFLOP/s counts the three matmuls (logits, d input, d weight).
--chunks adds a fusile row per chunk size (rows per chunk), in place of the stdlib's rule,
to find where the d weight updates stop being bound by their traffic.

--forward times the loss alone, without gradients, and adds the DSL form, a fused body
`F.cross_entropy(h @ w.T, y)` that compiles to one dot-rows kernel (the log-sum-exp and the
target logit reduced tile by tile, the logits never in HBM); TFLOP/s then counts one matmul.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

import fusile.stdlib as S
from fusile import fused


@fused
def dsl_lce(h, w, y):
    return F.cross_entropy(h @ w.T, y)


def torch_lce(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(h @ w.T, y)


def _chunked(rows: int):
    """fusile's linear cross-entropy with `rows` rows per chunk (the rule patched per call)."""
    import importlib

    # the module (fusile.stdlib's attribute of that name is the function)
    L = importlib.import_module("fusile.stdlib.linear_cross_entropy")

    def run(h, w, y):
        rule, L.chunk_rows = L.chunk_rows, lambda *_: rows
        try:
            return S.linear_cross_entropy(h, w, y)
        finally:
            L.chunk_rows = rule

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="8192,4096,128256", help="tokens,hidden,vocab")
    ap.add_argument("--chunks", default="", help="also time fusile at these rows per chunk")
    ap.add_argument("--forward", action="store_true",
                    help="the loss alone, no gradients; adds the DSL form (a dot-rows kernel)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_linear_ce: needs a CUDA or ROCm GPU", file=sys.stderr)
        return 2
    n, hidden, vocab = (int(v) for v in a.shape.split(","))
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(n, hidden, device="cuda", dtype=torch.bfloat16, generator=g)
    w = (torch.randn(vocab, hidden, device="cuda", dtype=torch.bfloat16, generator=g)
         / hidden ** 0.5)
    y = torch.randint(0, vocab, (n,), device="cuda", generator=g)
    y[::7] = -100  # some ignored rows
    h.requires_grad_(not a.forward)
    w.requires_grad_(not a.forward)
    impls = {"torch eager": torch_lce, "torch.compile": torch.compile(torch_lce),
             "fusile": lambda h, w, y: S.linear_cross_entropy(h, w, y)}
    if a.forward:
        impls["fusile DSL"] = dsl_lce
    for rows in (int(c) for c in a.chunks.split(",") if c):
        impls[f"fusile, {rows} rows"] = _chunked(rows)
    try:
        from liger_kernel.ops.fused_linear_cross_entropy import (
            LigerFusedLinearCrossEntropyFunction,
        )
        impls["Liger"] = lambda h, w, y: LigerFusedLinearCrossEntropyFunction.apply(h, w, y)[0]
    except ImportError:
        print("(Liger-Kernel is not installed: no Liger row)")
    loss = torch_lce(h.float(), w.float(), y)
    ref = [loss.detach()] if a.forward else \
        [t.float() for t in (loss.detach(), *torch.autograd.grad(loss, (h, w)))]
    del loss
    flops = (1 if a.forward else 3) * 2 * n * hidden * vocab
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; tokens {n}, hidden "
          f"{hidden}, vocab {vocab}, bf16, {'forward' if a.forward else 'fwd+bwd'}")
    print(f"{'':18s} {'ms':>8s} {'TFLOP/s':>8s} {'peak GiB':>9s} {'loss err':>9s}"
          + ("" if a.forward else f" {'dh err':>8s} {'dw err':>8s}"))
    for name, f in impls.items():
        def step(f=f):
            loss = f(h, w, y)
            return (loss,) if a.forward else (loss, *torch.autograd.grad(loss, (h, w)))

        out = step()
        errs = [float((o.float() - r).norm() / r.norm()) for o, r in zip(out, ref, strict=True)]
        del out
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        ms = do_bench(step, warmup=2, rep=500, return_mode="median")
        grads = "" if a.forward else f" {errs[1]:8.1e} {errs[2]:8.1e}"
        print(f"{name:18s} {ms:8.2f} {flops / ms / 1e9:8.0f} {peak:9.2f} {errs[0]:9.1e}{grads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
