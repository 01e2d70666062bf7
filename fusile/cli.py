"""The `fusile` command line. `fusile --help` lists the verbs; each has its own --help."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    import torch

    from fusile import samples
    from fusile.backends.run import backend_name

    torch.manual_seed(0)
    m, n = args.rows, args.cols
    print(f"fusile demo: sample programs at {m}x{n} {args.dtype} on {backend_name()}, "
          "checked against float64 torch")
    print(f"{'program':<14} {'generics':>8} {'compile s':>9} {'rel err':>9}  result")
    dtype = getattr(torch, args.dtype)
    failures = 0
    for name, (fn, ref, inputs) in samples.cases(m, n, dtype).items():
        t0 = time.perf_counter()
        out = fn(*inputs)
        took = time.perf_counter() - t0
        outs = out if isinstance(out, tuple) else (out,)
        refs = ref(*inputs)
        refs = refs if isinstance(refs, tuple) else (refs,)
        err = max(float((o.double() - r).norm() / r.norm()) for o, r in zip(outs, refs,
                                                                           strict=True))
        tol = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 3e-3}[args.dtype]
        ok = err <= tol
        failures += not ok
        kernels = fn.mlir(*inputs, stage="fused").count("linalg.generic")
        print(f"{name:<14} {kernels:>8} {took:>9.2f} {err:>9.2e}  {'ok' if ok else 'FAIL'}")
    print("all programs match the reference" if not failures else f"{failures} mismatches")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fusile", description="fusile: a portable kernel DSL for deep learning")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    demo = verbs.add_parser("demo", help="compile and run the sample programs, checked against "
                            "float64 torch", description="Compile the sample programs (norms, "
                            "softmax, activations), run them on this machine and compare with "
                            "torch in float64.")
    demo.add_argument("--rows", type=int, default=17, help="rows of each problem (default 17)")
    demo.add_argument("--cols", type=int, default=1000, help="columns (default 1000)")
    demo.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    from fusile.dsl.errors import FusileError

    try:
        return int(args.run(args))
    except FusileError as err:
        print(f"fusile: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
