"""Where the host time of one steady-state fused call goes, piece by piece, on the GPU: the
trace check, the call key, the fast-path lookup, the replay (its loop and its generated
straight-line code), the allocation, and the launch itself three ways (Triton's launcher
object, its C launch with the tensors, its C launch with addresses); the whole call with and
without FUSILE_FAST_REPLAY. Each piece is timed alone over many back-to-back repetitions
(median of 5 rounds).

    python -m benchmarks.host_pieces [--n 5000]

A profiler's own overhead (cProfile's) is larger than most of these pieces; timing them
alone is the way to see them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from benchmarks.host_latency import per_call_us
from fusile import config, samples
from fusile.backends import dispatch
from fusile.backends.triton import launch as L
from fusile.backends.triton.replay_code import straight_line
from fusile.dsl.torch_op import traced


def pieces(n: int) -> list[tuple[str, float]]:
    x = torch.randn(4, 128, device="cuda", dtype=torch.bfloat16)
    fn = samples.softmax_last
    with torch.no_grad():
        for _ in range(8):
            fn(x)  # compile, record the replay
        args = (x,)
        key = dispatch.call_key(args, True)
        fast = fn._fast.get(key)
        replay = fast.replay if fast is not None else None
        if replay is None or replay.direct is None:
            print("no replay was recorded: the pieces below the lookup are not timed")
        out: list[tuple[str, float]] = []

        def add(name: str, f: Callable[[], object]) -> None:
            out.append((name, per_call_us(f, n)))

        x8 = torch.randn(8, 128, device="cuda", dtype=torch.bfloat16)
        with config.override(fast_replay=True):  # another shape: recorded with the knob on
            for _ in range(8):
                fn(x8)
        add("torch.softmax (the op fusile is compared with)", lambda: torch.softmax(x, -1))
        add("user softmax, whole call", lambda: fn(x))
        add("user softmax, whole call, FUSILE_FAST_REPLAY=1", lambda: fn(x8))
        add("traced(args)", lambda: traced(args))
        add("call_key", lambda: dispatch.call_key(args, True))
        add("fast-path lookup", lambda: fn._fast.get(key))
        add("torch.is_grad_enabled", torch.is_grad_enabled)
        add("stream query", lambda: L.current_stream(0))
        add("hooks_active", L.hooks_active)
        if replay is not None and replay.direct is not None:
            add("replay (allocate + launch), loop", lambda: replay._loop([x]))
            made = straight_line(replay, replay._loop)
            if made is not None:
                add("replay, generated code (replay_code.py)", lambda: made[0]([x]))
            spec = replay.alloc[0]
            add("allocation", lambda: replay.new(*spec))
            kernel, grid, template, fills = replay.runs[0]
            g0, g1, g2 = (*grid, 1, 1)[:3]
            run, function, meta = kernel.run, kernel.function, kernel.packed_metadata
            made = [replay.new(*a) for a in replay.alloc]

            def filled(ints: bool) -> list:
                a = template.copy()
                for i, kind, j in fills:
                    t = [x][j] if kind == 0 else made[j]
                    a[i] = t.data_ptr() if ints else t
                return a

            tensors, ints = filled(False), filled(True)
            stream = L.current_stream(0)
            add("launcher object (CompiledKernel.run)",
                lambda: run(g0, g1, g2, stream, function, meta, None, None, None, *tensors))
            c = L.c_launch(run)
            if c is None:
                print("Triton's launcher is not the 3.6 form: direct C launch not timed")
            else:
                launch, coop, pdl = c
                add("C launch, tensors", lambda: launch(g0, g1, g2, stream, function, coop, pdl,
                                                        None, None, meta, None, None, None,
                                                        *tensors))
                add("C launch, addresses", lambda: launch(g0, g1, g2, stream, function, coop,
                                                          pdl, None, None, meta, None, None,
                                                          None, *ints))
            add("x.data_ptr()", x.data_ptr)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="repetitions per round (default 5000)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("host_pieces times the GPU launch path: it needs a CUDA GPU")
        return 1
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; us per repetition")
    for name, us in pieces(a.n):
        print(f"{name:<48} {us:7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
