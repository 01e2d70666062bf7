"""One declarative way to define a standard-library op: its DSL forward and backward, the
torch schema of the forward, what the backward keeps and which gradient goes where. From that
one description come the forward and backward custom ops (torch.library, for torch.compile),
their fake implementations (from fusile's own shape and dtype inference of the DSL functions,
not written by hand), and autograd for both the traced and the eager path (registry.py)."""

from __future__ import annotations

import re
from typing import Any

import torch

from fusile.stdlib.registry import OPS, Op, autograd, call


def _params(schema: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(type, name) of each argument and the name of each result of a schema written
    `(Tensor x, float eps) -> (Tensor y, Tensor rstd)`."""
    m = re.fullmatch(r"\((.*)\)\s*->\s*\(?(.*?)\)?", schema.strip())
    assert m is not None, schema
    args = [tuple(a.strip().rsplit(" ", 1)) for a in m.group(1).split(",") if a.strip()]
    outs = [r.strip().rsplit(" ", 1)[-1] for r in m.group(2).split(",")]
    return [(t, n) for t, n in args], outs


def _results(out: Any) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def define(name: str, forward: Any, backward: Any, schema: str, *, save: tuple[str, ...],
           grad_of: tuple[str, ...], grads: dict[str, int], keep: tuple[str, ...] = ()
           ) -> Any:
    """Register `fusile::name` and `fusile::name_backward` and return the forward op.

    - forward: the DSL function the op runs; `schema` names its arguments and results.
    - backward: the DSL function of the gradient, called with the gradients of the results
      in `grad_of` (a missing one is zeros), then the tensors in `save` (arguments or
      results, by name), then the non-tensor arguments in `keep`.
    - grads: for each argument that has a gradient, which of the backward's results it is
      (two arguments may share one: an add's two inputs).
    """
    args, outs = _params(schema)
    arg_names = [n for _, n in args]
    types = dict((n, t) for t, n in args)
    n_grads = max(grads.values()) + 1
    plain = f"({', '.join(f'{t} {n}' for t, n in args)}) -> " \
            f"({', '.join('Tensor' for _ in outs)})"
    bwd_args = [*(f"Tensor d{o}" for o in grad_of), *(f"Tensor {s}" for s in save),
                *(f"{types[k]} {k}" for k in keep)]
    bwd_plain = f"({', '.join(bwd_args)}) -> ({', '.join('Tensor' for _ in range(n_grads))})"
    single = len(outs) == 1

    def run(*a: Any) -> Any:
        out = _results(forward(*a))
        return out[0] if single else tuple(out)

    def run_bwd(*a: Any) -> Any:
        out = _results(backward(*a))
        return out[0] if n_grads == 1 else tuple(out)

    op = _op(name, run, plain, forward)
    op_bwd = _op(name + "_backward", run_bwd, bwd_plain, backward)
    saved_from = [("in", arg_names.index(s)) if s in arg_names else ("out", outs.index(s))
                  for s in save]
    kept = [arg_names.index(k) for k in keep]
    given = [outs.index(o) for o in grad_of]

    def setup(ctx: Any, inputs: tuple, output: Any) -> None:
        out = _results(output)
        ctx.save_for_backward(*(inputs[i] if src == "in" else out[i] for src, i in saved_from))
        ctx.kept = tuple(inputs[i] for i in kept)

    def grad(ctx: Any, *gs: Any) -> Any:
        saved = ctx.saved_tensors
        like = {s: t for s, t in zip(save, saved, strict=True)}
        ds = []
        for o, i in zip(grad_of, given, strict=True):
            g = gs[i]
            ds.append(g.contiguous() if g is not None else torch.zeros_like(like[o]))
        got = _results(call(op_bwd, *ds, *saved, *ctx.kept))
        out = tuple(got[grads[n]] if n in grads else None for n in arg_names)
        return out[0] if len(out) == 1 else out

    autograd(op, grad, setup)
    return op


def _op(name: str, impl: Any, schema: str, fn: Any) -> Any:
    """A custom op running `impl`, with a fake from the DSL function `fn`'s result types."""
    op = torch.library.custom_op(Op + name, impl, mutates_args=(), schema=schema)
    op._fusile_raw = impl
    OPS[name] = op

    @op.register_fake
    def _(*a: Any) -> Any:
        device = next(t.device for t in a if isinstance(t, torch.Tensor))
        made = tuple(torch.empty(shape, dtype=dtype, device=device)
                     for shape, dtype in fn._result_specs(list(a), {}))
        return made[0] if len(made) == 1 else made

    return op
