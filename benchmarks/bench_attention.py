"""Attention forward and forward+backward: fusile's flash kernels (from the DSL) against
SDPA's flash and cuDNN backends, bf16, in one run.

    python -m benchmarks.bench_attention [--seqs 1024,2048,...] [--dims 64,128]
                                         [--modes fwd,fwdbwd] [--json PATH]

16k tokens per batch (batch = 16384 / seq), 2048 hidden (32 heads of 64, 16 of 128).
Forward TFLOP/s counts 4 * batch * heads * seq^2 * d, halved for causal (the work a causal
kernel must do); forward+backward counts 3.5x that (the backward's five matmuls are 2.5x the
forward's two), as FlashAttention's benchmarks do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from fusile.stdlib.attention import attention


def _sdpa(backend: SDPBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
          causal: bool) -> torch.Tensor:
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _fns(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
         backward: bool) -> dict:
    fwd = {"fusile": lambda: attention(q, k, v, causal=causal),
           "flash": lambda: _sdpa(SDPBackend.FLASH_ATTENTION, q, k, v, causal),
           "cudnn": lambda: _sdpa(SDPBackend.CUDNN_ATTENTION, q, k, v, causal)}
    if not backward:
        return fwd
    do = torch.randn_like(q)

    def both(f):  # forward, then dq, dk, dv (no .grad accumulation)
        return lambda: torch.autograd.grad(f(), (q, k, v), do)[0]

    return {name: both(f) for name, f in fwd.items()}


def run(seqs: list[int], dims: list[int], modes: list[str], rounds: int = 3
        ) -> list[dict]:
    rows = []
    for d in dims:
        heads = 2048 // d
        for seq in seqs:
            batch = max(1, 16384 // seq)
            for mode, causal in ((m, c) for m in modes for c in (False, True)):
                backward = mode == "fwdbwd"
                q, k, v = (torch.randn(batch, heads, seq, d, device="cuda",
                                       dtype=torch.bfloat16, requires_grad=backward)
                           for _ in range(3))
                flops = 4.0 * batch * heads * seq * seq * d / (2 if causal else 1)
                flops *= 3.5 if backward else 1.0
                fns = _fns(q, k, v, causal, backward)
                row: dict = {"mode": mode, "d": d, "seq": seq, "batch": batch, "heads": heads,
                             "causal": causal}
                ref = fns["flash"]()
                live = {}
                for name, f in fns.items():
                    try:
                        out = f()
                        if name == "fusile":
                            err = ((out.float() - ref.float()).norm() / ref.float().norm())
                            row["fusile_rel_err_vs_flash"] = float(err)
                        live[name] = f
                    except RuntimeError as exc:  # a backend this build lacks
                        row[f"{name}_tflops"] = None
                        print(f"  {name}: {exc}".splitlines()[0][:100], file=sys.stderr)
                # rounds interleave the backends, so a slow spell of the GPU (clocks, a
                # neighbour) hits them alike; each figure is the median over the rounds
                times: dict[str, list[float]] = {name: [] for name in live}
                for _ in range(rounds):
                    for name, f in live.items():
                        times[name].append(float(do_bench(f, warmup=250, rep=100,
                                                          return_mode="median")))
                for name, ts in times.items():
                    row[f"{name}_tflops"] = flops / statistics.median(ts) / 1e9
                    row[f"{name}_ms_rounds"] = ts
                rows.append(row)
                fl, cu = row.get("flash_tflops"), row.get("cudnn_tflops")
                fu = row["fusile_tflops"]
                print(f"{mode:<6} d={d:<3} seq={seq:<5} {'causal' if causal else 'full  '}  "
                      "fusile "
                      f"{fu:6.1f}  sdpa-flash {fl or 0:6.1f}  cudnn {cu or 0:6.1f}  "
                      f"fusile/flash {fu / fl if fl else 0:.2f}x  "
                      f"fusile/cudnn {fu / cu if cu else 0:.2f}x  "
                      f"(err {row['fusile_rel_err_vs_flash']:.1e})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seqs", default="1024,2048,4096,8192,16384")
    p.add_argument("--dims", default="64,128")
    p.add_argument("--modes", default="fwd,fwdbwd", help="fwd, fwdbwd or both")
    p.add_argument("--rounds", type=int, default=3,
                   help="timing rounds, interleaving the backends; the median is reported")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_attention needs a CUDA GPU", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    modes = a.modes.split(",")
    if not set(modes) <= {"fwd", "fwdbwd"}:
        p.error(f"--modes takes fwd and fwdbwd, got {a.modes}")
    rows = run([int(s) for s in a.seqs.split(",")], [int(d) for d in a.dims.split(",")], modes,
               a.rounds)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
