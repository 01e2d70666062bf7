"""Decode attention: one query token per sequence against a KV cache, bf16, head dim 128, GQA
(32 query heads, 8 K/V heads), fusile against SDPA's flash and cuDNN backends, in one run.

    python -m benchmarks.bench_decode [--batches 1,8,64] [--kv 1024,4096,...] [--json PATH]

Decoding is bound by reading the cache: GB/s counts K and V once (the bytes any kernel must
move) and % copy compares it with a device copy measured in the same run (bytes read +
written). Each kernel is timed from a CUDA graph replay (do_bench_cudagraph: no host time);
`fusile eager` is the same call launched from Python, host included.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench, do_bench_cudagraph

from fusile.stdlib.attention import attention

HEADS, KV_HEADS, D = 32, 8, 128


def copy_ceiling() -> float:
    """Device copy bandwidth, bytes read + written per second (1 GiB bf16)."""
    src = torch.randn(1 << 29, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = do_bench_cudagraph(lambda: dst.copy_(src))
    return 2 * src.numel() * 2 / (ms * 1e-3)


def _sdpa(backend: SDPBackend, q, k, v):
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def _fns(q, k, v) -> dict:
    """What to time: name -> (call, timed from a CUDA graph)."""
    return {"fusile": (lambda: attention(q, k, v), True),
            "fusile eager": (lambda: attention(q, k, v), False),
            "sdpa flash": (lambda: _sdpa(SDPBackend.FLASH_ATTENTION, q, k, v), True),
            "sdpa cudnn": (lambda: _sdpa(SDPBackend.CUDNN_ATTENTION, q, k, v), True),
            "sdpa efficient": (lambda: _sdpa(SDPBackend.EFFICIENT_ATTENTION, q, k, v), True)}


def _time(fn, graph: bool) -> float | None:
    try:
        fn()
        torch.cuda.synchronize()
        return (do_bench_cudagraph if graph else do_bench)(fn)
    except Exception as err:  # a backend that does not take this shape
        print(f"  ({type(err).__name__}: {str(err)[:100]})", file=sys.stderr)
        return None


def run(batches: list[int], kvs: list[int], max_tokens: int) -> list[dict]:
    ceiling = copy_ceiling()
    print(f"copy ceiling: {ceiling / 1e9:.0f} GB/s (read + write)")
    rows = []
    print(f"{'batch':>5} {'kv_len':>7} {'what':<13} {'us':>8} {'GB/s':>7} {'% copy':>7} "
          f"{'vs fusile':>9}")
    for b in batches:
        for n in kvs:
            if b * n > max_tokens:
                continue
            torch.manual_seed(0)
            q = torch.randn(b, HEADS, 1, D, device="cuda", dtype=torch.bfloat16)
            k, v = (torch.randn(b, KV_HEADS, n, D, device="cuda", dtype=torch.bfloat16)
                    for _ in range(2))
            cache = 2 * k.numel() * 2
            times = {name: _time(fn, graph) for name, (fn, graph) in _fns(q, k, v).items()}
            base = times["fusile"]
            for name, ms in times.items():
                if ms is None:
                    print(f"{b:>5} {n:>7} {name:<13} {'n/a':>8}")
                    continue
                gbs = cache / (ms * 1e-3) / 1e9
                vs = f"{ms / base:9.2f}" if base else ""
                print(f"{b:>5} {n:>7} {name:<13} {ms * 1e3:8.1f} {gbs:7.0f} "
                      f"{100 * gbs * 1e9 / ceiling:6.1f}% {vs}")
                rows.append({"batch": b, "kv_len": n, "what": name, "ms": ms, "gbs": gbs,
                             "pct_copy": 100 * gbs * 1e9 / ceiling})
            del q, k, v
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="decode attention against SDPA (bf16, d=128, "
                                 "GQA 32/8)")
    ap.add_argument("--batches", default="1,8,64", help="comma-separated batch sizes")
    ap.add_argument("--kv", default="1024,4096,16384,65536,131072",
                    help="comma-separated cache lengths")
    ap.add_argument("--max-tokens", type=int, default=1 << 21,
                    help="skip batch x kv_len above this (memory; default 2M tokens, 8 GB)")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_decode needs a CUDA GPU", file=sys.stderr)
        return 2  # as the other benchmarks
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = run([int(x) for x in a.batches.split(",")], [int(x) for x in a.kv.split(",")],
               a.max_tokens)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
