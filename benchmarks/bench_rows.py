"""Memory-bound programs at LLM sizes: fusile vs torch eager vs torch.compile.

    python -m benchmarks.bench_rows [--sizes 16384x4096,...] [--programs a,b] [--no-compile]

Prints one row per (program, size): time (median of triton.testing.do_bench), GB/s counting
each input read once and each output written once, and that as a fraction of the measured
device-to-device copy bandwidth; then the host overhead of a fused call against a bare launch
of the same Triton kernel. `--json PATH` saves the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from fusile import samples

# what a PyTorch user writes today, in the working dtype
EAGER = {
    "layer_norm": lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b, 1e-5),
    "rms_norm": lambda x, w: F.rms_norm(x, x.shape[-1:], w, 1e-6),
    "add_rms_norm": lambda x, r, w: ((h := x + r), F.rms_norm(h, h.shape[-1:], w, 1e-6))[::-1],
    "softmax": lambda x: torch.softmax(x, -1),
    "log_softmax": lambda x: torch.log_softmax(x, -1),
    "logsumexp": lambda x: torch.logsumexp(x.float(), -1).to(x.dtype),
    "gelu_bias": lambda x, b: F.gelu(x + b),
    "swiglu": lambda a, b: F.silu(a) * b,
    "colsum_scale": lambda x: x / torch.sqrt((x.float() * x.float()).sum(0, keepdim=True)
                                              + 1.0).to(x.dtype),
}


def copy_bandwidth() -> float:
    """Measured device-to-device copy, bytes read + written per second."""
    from triton.testing import do_bench

    a = torch.randn(1 << 28, device="cuda", dtype=torch.bfloat16)  # 512 MiB
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), return_mode="median")
    return 2 * a.numel() * a.element_size() / (ms * 1e-3)


def min_bytes(fn, args) -> int:
    """Each input read once and each output written once (the fused floor)."""
    return fn.plan(*args).bytes


def bench_one(name: str, m: int, n: int, compile_: bool, copy_bw: float) -> dict:
    from triton.testing import do_bench

    fn, _ref, args = samples.cases(m, n, torch.bfloat16, "cuda")[name]
    eager = EAGER[name]
    nbytes = min_bytes(fn, args)
    row = {"program": name, "size": f"{m}x{n}", "bytes": nbytes}
    runs = {"fusile": lambda: fn(*args), "eager": lambda: eager(*args)}
    if compile_:
        compiled = torch.compile(eager, dynamic=False)
        runs["compile"] = lambda: compiled(*args)
    for key, run in runs.items():
        run()
        torch.cuda.synchronize()
        ms = do_bench(run, warmup=250, rep=600, return_mode="median")  # long: clocks ramp
        row[f"{key}_ms"] = ms
        row[f"{key}_gbs"] = nbytes / (ms * 1e-3) / 1e9
        row[f"{key}_frac"] = nbytes / (ms * 1e-3) / copy_bw
    return row


def host_overhead() -> dict:
    """Per-call host time of a fused call vs a bare launch of the same Triton kernel, on a
    problem small enough that the GPU is not the bottleneck."""
    fn = samples.softmax_last
    x = torch.randn(4, 128, device="cuda")
    fn(x)
    program = next(iter(fn.compiled(x).programs.values()))
    launch = program.launches[0]
    out = torch.empty_like(x)
    kernel = launch.fn["main"]

    def bare() -> None:
        kernel[(4,)](x, out, x.stride(0), x.stride(1), out.stride(0), out.stride(1), 4, 128,
                     BLOCK_P=1, BLOCK_R=128, USE_I64=False, num_warps=1, num_stages=1)

    bare()
    res = {}
    for key, call in (("fusile_us", lambda: fn(x)), ("bare_triton_us", bare)):
        for _ in range(200):
            call()
        torch.cuda.synchronize()
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        torch.cuda.synchronize()
        res[key] = (time.perf_counter() - t0) / n * 1e6
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="16384x4096,16384x8192,4096x32768")
    ap.add_argument("--programs", default=",".join(EAGER))
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks need a GPU", file=sys.stderr)
        return 2
    copy_bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"copy {copy_bw / 1e12:.2f} TB/s")
    rows = []
    head = f"{'program':<13} {'size':<11} {'fusile GB/s':>11} {'%copy':>6} {'eager':>7} " \
           f"{'compile':>7} {'fus/comp':>8} {'fusile ms':>9}"
    print(head)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    for name in args.programs.split(","):
        for m, n in sizes:
            r = bench_one(name, m, n, not args.no_compile, copy_bw)
            rows.append(r)
            comp = r.get("compile_gbs", math.nan)
            print(f"{name:<13} {r['size']:<11} {r['fusile_gbs']:>11.0f} "
                  f"{100 * r['fusile_frac']:>5.1f}% {r['eager_gbs']:>7.0f} {comp:>7.0f} "
                  f"{r['fusile_gbs'] / comp:>8.2f} {r['fusile_ms']:>9.3f}", flush=True)
    ovh = host_overhead()
    print(f"host overhead per call: fusile {ovh['fusile_us']:.1f} us, bare triton launch "
          f"{ovh['bare_triton_us']:.1f} us")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "copy_tbs": copy_bw / 1e12, "rows": rows, "overhead": ovh}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
