"""The `fusile` command line. `fusile --help` lists the verbs; each has its own --help.

    fusile compile model.py:add_rms_norm --target mi300x --shape x=bf16[M,4096] \\
        --shape residual=bf16[M,4096] --shape weight=bf16[4096] --emit hsaco -o out/
    fusile explain model.py:add_rms_norm --target h100 --shape ... --size M=16384
    fusile targets
    fusile demo
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from fusile.stages import AOT, FRONT_END, PLAN, STAGES


class CliError(Exception):
    """A problem with what the user typed: printed as one line, exit status 2."""




def load_function(spec: str) -> Any:
    """FILE.py:FUNC -> the fused function (a plain function is wrapped with @fused)."""
    from fusile.dsl.fused import FusedFunction, fused

    if ":" not in spec:
        raise CliError(f"expected FILE.py:FUNCTION, got {spec!r}")
    file, name = spec.rsplit(":", 1)
    path = Path(file)
    if not path.is_file():
        raise CliError(f"no such file: {file}")
    mod_name = "fusile_cli_" + re.sub(r"\W", "_", path.stem)
    loader = importlib.util.spec_from_file_location(mod_name, path)
    if loader is None or loader.loader is None:
        raise CliError(f"cannot load {file} as Python")
    module = importlib.util.module_from_spec(loader)
    sys.modules[mod_name] = module
    try:
        loader.loader.exec_module(module)
    except Exception as exc:
        raise CliError(f"importing {file} failed: {type(exc).__name__}: {exc}") from exc
    obj = getattr(module, name, None)
    if obj is None:
        defined = sorted(n for n, v in vars(module).items()
                         if isinstance(v, FusedFunction) or (callable(v) and
                                                             getattr(v, "__module__", "")
                                                             == mod_name))
        raise CliError(f"no function {name!r} in {file} (it defines: "
                       f"{', '.join(defined) or 'nothing callable'})")
    if isinstance(obj, FusedFunction):
        return obj
    if callable(obj):
        return fused(obj)
    raise CliError(f"{name!r} in {file} is a {type(obj).__name__}, not a function")


_SHAPE = re.compile(r"^(\w+)=(\w+)\[([^\]]*)\]$")


def parse_shape(text: str) -> tuple[str, Any]:
    """x=bf16[4096,4096], x=bf16[M,4096], eps=1e-5, n=3, flag=true."""
    from fusile.dsl.resolve import dtype_of

    m = _SHAPE.match(text.replace(" ", ""))
    if m:
        name, dt, dims_text = m.groups()
        dtype = dtype_of(dt)
        if dtype is None:
            raise CliError(f"--shape {text}: unknown dtype {dt!r} (bf16, f16, f32, f64, i32, "
                           "i64, bool)")
        dims: list[int | str] = []
        for d in filter(None, dims_text.split(",")):
            if d.isdigit():
                dims.append(int(d))
            elif re.fullmatch(r"[A-Za-z_]\w*", d):
                dims.append(d)
            else:
                raise CliError(f"--shape {text}: dim {d!r} is neither a size nor a name")
        return name, dtype[tuple(dims)]
    m = re.match(r"^(\w+)=(.+)$", text)
    if m:
        name, value = m.groups()
        if value.lower() in ("true", "false"):
            return name, value.lower() == "true"
        try:
            return name, int(value)
        except ValueError:
            pass
        try:
            return name, float(value)
        except ValueError:
            pass
    raise CliError(f"--shape {text!r}: expected NAME=DTYPE[dims] (e.g. x=bf16[M,4096]) or "
                   "NAME=NUMBER (e.g. eps=1e-5)")


def _signature(args: argparse.Namespace, need_sizes: bool = False
               ) -> tuple[dict[str, Any], dict[str, int]]:
    """The --shape signature and the --size values. Every --size names a dim of some
    --shape; with need_sizes (explain), every named dim has a --size."""
    from fusile.dsl.types import TensorSpec

    sig: dict[str, Any] = dict(parse_shape(s) for s in args.shape or [])
    named = {d for v in sig.values() if isinstance(v, TensorSpec) for d in v.dims or ()
             if isinstance(d, str)}
    sizes: dict[str, int] = {}
    for s in args.size or []:
        m = re.match(r"^(\w+)=(\d+)$", s)
        if not m:
            raise CliError(f"--size {s!r}: expected NAME=INT, e.g. M=8192")
        if m.group(1) not in named:
            raise CliError(f"--size {s}: no --shape has a dim named {m.group(1)!r} (named: "
                           f"{', '.join(sorted(named)) or 'none'})")
        sizes[m.group(1)] = int(m.group(2))
    missing = sorted(named - set(sizes))
    if need_sizes and missing:
        raise CliError(f"size {missing[0]!r} is symbolic: give its value with --size "
                       f"{missing[0]}=INT")
    return sig, sizes


def _check_target(name: str, emit: str | None = None) -> None:
    """A known target; for `fusile compile`, one that compiles ahead of time and has `emit`
    (checked before any compile work)."""
    from fusile.backends.targets import TARGETS

    if name not in TARGETS and not (name == "mlir-cpu" and emit is None):
        raise CliError(f"unknown target {name!r}; known: {', '.join(TARGETS)} "
                       "(and mlir-cpu for explain)")
    if emit is None:
        return
    backend, stage = TARGETS[name].backend, STAGES[emit]
    if stage.source != AOT:  # target-independent, or a table
        return
    gpu = {b for s in STAGES.values() for b in s.backends}
    if backend not in gpu:
        gpus = ", ".join(n for n, t in TARGETS.items() if t.backend in gpu)
        raise CliError(f"--target {name} runs on the Triton interpreter and has nothing to "
                       f"compile ahead of time; pick a GPU target ({gpus})")
    if stage.backends and backend not in stage.backends:
        own = sorted(n for n, s in STAGES.items() if backend in s.backends)
        raise CliError(f"--emit {emit} does not exist for {name} ({backend}); it emits "
                       f"{', '.join(own)} and the common stages")


def _compile(args: argparse.Namespace) -> int:
    _check_target(args.target, args.emit)
    sig, sizes = _signature(args, need_sizes=args.emit == "plan")
    fn = load_function(args.function)
    out_dir = Path(args.output) if args.output else None
    stage = STAGES[args.emit]
    if stage.binary and out_dir is None:
        raise CliError(f"--emit {args.emit} is binary: give -o DIR")
    texts: dict[str, str | bytes] = {}
    if stage.source == FRONT_END:
        texts[f"{fn.__name__}.{stage.suffix}"] = fn.compiled(**sig).artifact(args.emit)
    elif stage.source == PLAN:
        texts[f"{fn.__name__}.{stage.suffix}"] = str(fn.explain(target=args.target,
                                                                sizes=sizes, **sig))
    else:
        print(f"compiling {fn.__name__} for {args.target} ...", file=sys.stderr)
        t0 = time.perf_counter()
        art = fn.compile(args.target, sizes=sizes, progress=_progress, **sig)
        print(f"done in {time.perf_counter() - t0:.1f}s: {len(art.kernels)} kernel(s)",
              file=sys.stderr)
        for k in art.kernels:
            if not k.launchable:  # compiled, but a launch would fail: say so, do not stop
                print(f"warning: {k.summary()}", file=sys.stderr)
        if args.emit == "triton":
            texts[f"{fn.__name__}.{stage.suffix}"] = art.triton
        else:
            for k in art.kernels:
                if args.emit not in k.asm:
                    raise CliError(f"--emit {args.emit} does not exist for target "
                                   f"{args.target} (have: {', '.join(sorted(k.asm))})")
                texts[f"{k.name}.{stage.suffix}"] = k.asm[args.emit]
            if out_dir is not None:
                texts["metadata.json"] = json.dumps([{
                    "kernel": k.name, "kind": k.kind, "registers": k.registers,
                    "spills": k.spills, "shared_bytes": k.shared_bytes,
                    "launchable": k.launchable, "num_warps": k.num_warps, "block": k.block,
                    "grid": k.grid}
                    for k in art.kernels], indent=1)
    if out_dir is None:
        for text in texts.values():
            print(text if isinstance(text, str) else text.decode(errors="replace"))
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        path = out_dir / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _progress(i: int, n: int, name: str) -> None:
    print(f"  [{i + 1}/{n}] {name}", file=sys.stderr, flush=True)


def _explain(args: argparse.Namespace) -> int:
    _check_target(args.target)
    sig, sizes = _signature(args, need_sizes=True)
    fn = load_function(args.function)
    ex = fn.explain(target=args.target, sizes=sizes, **sig)
    print(json.dumps(ex.to_dict(), indent=1, default=str) if args.json else ex)
    return 0


def _targets(args: argparse.Namespace) -> int:
    from fusile.backends.targets import TARGETS

    for t in TARGETS.values():
        print(t.describe())
    from fusile.backends.targets import this_cpu

    print(this_cpu().describe())
    print(f"{'reference':9} the float64 oracle (numpy over the unfused MLIR): "
          "FUSILE_TARGET=reference")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import torch

    from fusile import bf16, samples
    from fusile.backends.run import backend_name

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    m, n = (args.rows, args.cols) if device == "cpu" else (4096, 4096)
    dtype = getattr(torch, args.dtype)
    print(f"fusile demo: the sample programs at {m}x{n} {args.dtype} on "
          f"{backend_name(device)}, checked against float64")
    print(f"{'program':<14}{'kernels':>8}{'first call s':>13}{'rel err':>10}  result")
    tol = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 3e-3}[args.dtype]
    failures = 0
    for name, (fn, _ref, inputs) in samples.cases(m, n, dtype, device).items():
        t0 = time.perf_counter()
        out = fn(*inputs)
        took = time.perf_counter() - t0
        outs = out if isinstance(out, tuple) else (out,)
        refs = fn.reference(*inputs)
        refs = refs if isinstance(refs, tuple) else (refs,)
        err = max(float((o.double().cpu() - torch.from_numpy(r)).norm() /
                        max(1e-30, float(torch.from_numpy(r).norm())))
                  for o, r in zip(outs, refs, strict=True))
        ok = err <= tol
        failures += not ok
        kernels = len(fn.plan(*inputs).kernels)
        print(f"{name:<14}{kernels:>8}{took:>13.2f}{err:>10.2e}  {'ok' if ok else 'FAIL'}",
              flush=True)
    print("\nahead of time, no GPU needed (add_rms_norm, bf16 rows of 4096):")
    fn = samples.add_rms_norm
    sig: dict[str, Any] = {"x": bf16["M", 4096], "residual": bf16["M", 4096],
                           "weight": bf16[4096]}
    for target in ("h100", "mi300x"):
        art = fn.compile(target, **sig)
        for k in art.kernels:
            binary = "cubin" if target == "h100" else "hsaco"
            print(f"  {target:<7} {k.name}: {len(k.asm[binary])} byte {binary}, "
                  f"{k.registers} registers, {k.spills} spilled bytes")
    print()
    print(fn.explain(target="h100", sizes={"M": 16384}, **sig))
    print("\nall programs match the reference" if not failures else f"\n{failures} mismatches")
    return 1 if failures else 0


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fusile")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    from fusile.backends.targets import TARGETS
    from fusile.dsl.errors import FusileError

    parser = argparse.ArgumentParser(
        prog="fusile", description="fusile: a portable kernel DSL for deep learning. "
        "FUNCTION is FILE.py:NAME; a --shape is NAME=DTYPE[dims] (dims are ints, or names "
        "for runtime sizes) or NAME=NUMBER for scalar parameters.")
    parser.add_argument("--version", action="version", version=f"fusile {_version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    def shaped(p: argparse.ArgumentParser) -> None:
        p.add_argument("function", metavar="FILE.py:FUNCTION")
        p.add_argument("--shape", action="append", metavar="NAME=DTYPE[dims]",
                       help="a parameter's dtype and shape, e.g. x=bf16[M,4096] (repeat)")
        p.add_argument("--size", action="append", metavar="NAME=INT",
                       help="a value for a named size, e.g. M=8192 (repeat)")

    c = verbs.add_parser("compile", help="compile ahead of time for a target (no GPU needed)",
                         description="Compile a fused function for a named target and emit "
                         "one stage's artifact.", epilog="stages (--emit):\n" + "\n".join(
                             f"  {s.name:<8}{s.what}" + (
                                 f" ({', '.join(sorted(s.backends))} targets)" if s.backends
                                 else "") for s in STAGES.values()),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    shaped(c)
    c.add_argument("--target", required=True,
                   help=f"one of {', '.join(TARGETS)} (`fusile targets` lists them)")
    c.add_argument("--emit", choices=list(STAGES), default="triton", metavar="STAGE",
                   help="the stage to emit (default triton; listed below)")
    c.add_argument("-o", "--output", metavar="DIR", help="write files here (needed for binaries)")
    c.set_defaults(run=_compile)
    e = verbs.add_parser("explain", help="kernels, bytes, FLOPs and roofline on a target",
                         description="Show which ops share each kernel, the HBM bytes and "
                         "FLOPs of each, and the roofline time on the target.")
    shaped(e)
    e.add_argument("--target", default="h100", help=f"one of {', '.join(TARGETS)}, or mlir-cpu "
                   "(this CPU, measured); default h100")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.set_defaults(run=_explain)
    t = verbs.add_parser("targets", help="the known targets and their numbers")
    t.set_defaults(run=_targets)
    d = verbs.add_parser("demo", help="run, check and explain the sample programs",
                         description="Compile the sample programs, run them on this machine "
                         "(the GPU if there is one, else this CPU through mlir-cpu, or the "
                         "Triton interpreter with FUSILE_TARGET=cpu), check them against "
                         "float64, compile one for h100 and mi300x "
                         "and print its explain table.")
    d.add_argument("--rows", type=_positive, default=17, help="rows on the CPU (default 17)")
    d.add_argument("--cols", type=_positive, default=1000,
                   help="columns on the CPU (default 1000)")
    d.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    d.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    d.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except CliError as err:
        print(f"fusile {args.verb}: {err}", file=sys.stderr)
        return 2
    except FusileError as err:
        print(f"fusile {args.verb}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
