"""Rotary embedding written with slices (the textbook formula) against torch and the stdlib.

    python -m benchmarks.bench_rope_slices [--shape 1,32,4096,128]

bf16 forward, one tensor (run it for q and for k). GB/s counts the floor: x read once, the
result written once (cos and sin, (seq, d), are small and counted too). The slices version
returns the two halves (the DSL has no concat yet); "+ cat" adds the torch.cat a caller
needing one tensor would pay.
"""

from __future__ import annotations

import argparse

import torch
import triton.testing

import fusile.stdlib as S
from fusile import fused

COPY_TB_S = 4.18  # measured device copy on the H200 (read + write), benchmarks/RESULTS.md


@fused
def rotary_halves(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return x1 * cos[:, :h] - x2 * sin[:, :h], x2 * cos[:, h:] + x1 * sin[:, h:]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def torch_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1,32,4096,128", help="batch,heads,seq,head_dim")
    args = ap.parse_args()
    b, h, s, d = (int(v) for v in args.shape.split(","))
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, generator=g)
    pos = torch.arange(s, device="cuda", dtype=torch.float32)[:, None]
    inv = 10000.0 ** (-torch.arange(0, d // 2, device="cuda", dtype=torch.float32) * 2 / d)
    ang = torch.cat((pos * inv, pos * inv), dim=-1)
    cos, sin = ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)

    ref = torch_rope(x.double(), cos.double(), sin.double())
    y1, y2 = rotary_halves(x, cos, sin)
    err = (torch.cat((y1, y2), -1).double() - ref).norm() / ref.norm()
    assert err < 1.6e-2, f"rotary_halves is wrong: relative error {err:.3g}"

    compiled = torch.compile(torch_rope)
    runs = {
        "torch eager": lambda: torch_rope(x, cos, sin),
        "torch.compile": lambda: compiled(x, cos, sin),
        "fusile stdlib rope": lambda: S.rope(x, cos, sin),
        "fusile slices (halves)": lambda: rotary_halves(x, cos, sin),
        "fusile slices + cat": lambda: torch.cat(rotary_halves(x, cos, sin), -1),
    }
    floor = 2 * x.numel() * x.element_size() + 2 * cos.numel() * cos.element_size()
    print(f"rope forward, bf16, x {tuple(x.shape)}; floor {floor / 2**20:.1f} MiB; "
          f"torch {torch.__version__}, triton {triton.__version__}, "
          f"{torch.cuda.get_device_name()}")
    print(f"{'':24} {'us':>8} {'GB/s':>8} {'% copy':>7} {'vs compile':>10}")
    for mode in ("stream", "cuda graph"):  # a graph replay has no host time: the kernels
        print(mode)
        times = {}
        for k, fn in runs.items():
            try:
                times[k] = (triton.testing.do_bench(fn, warmup=50, rep=300) if mode == "stream"
                            else triton.testing.do_bench_cudagraph(fn, rep=300))
            except Exception as exc:  # a capture fusile's call path does not survive
                print(f"{k:24} failed: {type(exc).__name__}: {str(exc)[:80]}")
        for k, ms in times.items():
            gbs = floor / ms / 1e6
            print(f"{k:24} {ms * 1e3:8.1f} {gbs:8.0f} {gbs / (COPY_TB_S * 1e3) * 100:6.0f}% "
                  f"{times['torch.compile'] / ms:9.2f}x")


if __name__ == "__main__":
    main()
