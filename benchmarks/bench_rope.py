"""Rotary embedding of q and k, forward and forward+backward: fusile.stdlib against torch
eager, torch.compile and Liger-Kernel, with the copy ceiling measured in the same run.

    python -m benchmarks.bench_rope [--shape 1,32,4096,128] [--kv-heads 32]

bf16, Hugging Face's layout and formula (apply_rotary_pos_emb: q, k (batch, heads, seq, d),
cos, sin (batch, seq, d)). GB/s counts the floor: q and k read once and written once (the
backward: their gradients read and written), cos and sin read once. Each figure is the
do_bench median; "graph" replays the call from a CUDA graph (the kernels alone, no host).
"""

from __future__ import annotations

import argparse

import torch
import triton.testing

import fusile.stdlib as S


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def hf_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def copy_tb_s(n_bytes: int) -> float:
    """Device copy (read + write) of a tensor this large, TB/s."""
    a = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a), warmup=50, rep=300)
    return 2 * n_bytes / ms / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1,32,4096,128", help="batch,heads,seq,head_dim")
    ap.add_argument("--kv-heads", type=int, default=0, help="k's heads (default: as q)")
    args = ap.parse_args()
    b, h, s, d = (int(v) for v in args.shape.split(","))
    hk = args.kv_heads or h
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, hk, s, d, device="cuda", dtype=torch.bfloat16, generator=g)
    pos = torch.arange(s, device="cuda", dtype=torch.float32)[:, None]
    inv = 10000.0 ** (-torch.arange(0, d // 2, device="cuda", dtype=torch.float32) * 2 / d)
    ang = torch.cat((pos * inv, pos * inv), dim=-1)[None].expand(b, s, d)
    cos, sin = ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)
    dq, dk = torch.randn_like(q), torch.randn_like(k)

    ref = hf_rope(q.double(), k.double(), cos.double(), sin.double())
    for got, want in zip(S.apply_rotary_pos_emb(q, k, cos, sin), ref, strict=True):
        err = (got.double() - want).norm() / want.norm()
        assert err < 1.6e-2, f"fusile rope is wrong: relative error {err:.3g}"

    impls = {"torch eager": hf_rope, "torch.compile": torch.compile(hf_rope),
             "fusile": S.apply_rotary_pos_emb}
    try:
        from liger_kernel.transformers.rope import liger_rotary_pos_emb
        impls["Liger"] = liger_rotary_pos_emb
    except ImportError:
        print("(Liger-Kernel is not installed: no Liger column)")

    qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()

    def fwd(fn):
        return lambda: fn(q, k, cos, sin)

    def fwd_bwd(fn):
        def step():
            a, c = fn(qg, kg, cos, sin)
            torch.autograd.backward((a, c), (dq, dk))
        return step

    elems = (h + hk) * b * s * d
    floor = 2 * elems * 2 + 2 * cos.numel() * 2
    ceiling = copy_tb_s(elems * 2)
    print(f"rope q {tuple(q.shape)} k {tuple(k.shape)} bf16; {torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}, triton {triton.__version__}; copy ceiling "
          f"{ceiling:.2f} TB/s")
    print(f"{'':14} {'pass':8} {'mode':6} {'us':>8} {'% copy':>7} {'vs compile':>10} "
          f"{'vs Liger':>8}")
    for name, make, n_bytes in (("fwd", fwd, floor), ("fwd+bwd", fwd_bwd, 2 * floor)):
        for mode in ("stream", "graph"):
            times = {}
            for label, fn in impls.items():
                step = make(fn)
                try:
                    times[label] = (triton.testing.do_bench(step, warmup=50, rep=300)
                                    if mode == "stream" else
                                    triton.testing.do_bench_cudagraph(step, rep=300))
                except Exception as exc:  # a capture a call path does not survive
                    print(f"{label:14} {name:8} {mode:6} failed: {type(exc).__name__}: "
                          f"{str(exc)[:80]}")
            for label, ms in times.items():
                pct = n_bytes / ms / 1e9 / ceiling * 100
                liger = f"{times['Liger'] / ms:7.2f}x" if "Liger" in times else ""
                print(f"{label:14} {name:8} {mode:6} {ms * 1e3:8.1f} {pct:6.0f}% "
                      f"{times['torch.compile'] / ms:9.2f}x {liger:>8}")


if __name__ == "__main__":
    main()
