"""Gradients of user @fused functions, derived: the forward and backward programs, and how
they meet torch.autograd in eager mode and under torch.compile.

Per compiled signature and set of inputs that need a gradient, lowering/autodiff.py derives
two programs, printed as DSL source (lowering/to_source.py) and compiled like any other:

  forward:  the function's results, then the values the backward reads that the save rule
            keeps (a norm's mean of squares, a softmax's log-sum-exp: see autodiff.py);
  backward: (the forward's runtime arguments, the kept values, one gradient per result that
            received one) -> one gradient per input that needs one, in the input's dtype.

A backward is compiled per subset of results whose gradient arrives (the others are zero).
Sliced parameters are separate arguments of the lowered program (views of the caller's
tensor); in eager mode torch's view autograd adds their gradients into the tensor's, and
under torch.compile the gradient op (`<name>_backward`, dsl/torch_op.py) adds them into the
slice itself. A returned concat is its pieces here: its gradient is cut into theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fusile.dsl.errors import Source
from fusile.lowering.autodiff import REDUCTIONS, Gradients, differentiate
from fusile.lowering.to_source import Program, to_source
from fusile.lowering.trace import Node, Traced, trace

if TYPE_CHECKING:
    from fusile.dsl.fused import FusedFunction


@dataclass
class Derivation:
    compiled: Any  # the signature's Compiled
    traced: Traced
    wrt: tuple[int, ...]  # positions in the lowered program's arguments
    save: frozenset[str]
    forward_source: str
    forward: FusedFunction
    float_results: list[bool]  # per lowered result
    saved: list[Node]
    backwards: dict[tuple[int, ...], tuple[str, FusedFunction]] = field(default_factory=dict)

    @property
    def n_results(self) -> int:
        return len(self.float_results)

    def backward(self, given: tuple[int, ...]) -> tuple[str, FusedFunction]:
        """The backward program for gradients arriving at the results in `given`."""
        hit = self.backwards.get(given)
        if hit is None:
            grads = differentiate(self.traced, list(self.wrt), list(given), self.save)
            extra = [s for s in grads.saved if s.id not in {t.id for t in self.saved}]
            assert not extra, f"a backward reads values the forward did not keep: {extra}"
            params = [*_params(self.traced), *[(f"saved{k}", s) for k, s in
                                               enumerate(self.saved)],
                      *[(f"grad{k}", g) for k, g in zip(given, grads.grads_in, strict=True)]]
            text = to_source(Program(f"{self.traced.name}_backward", _unique(params),
                                     grads.backward, self.traced.env))
            hit = self.backwards[given] = (text, _program(self.forward, text,
                                                          f"{self.traced.name} backward"))
        return hit


def derivation(fn: FusedFunction, compiled: Any, wrt: tuple[int, ...], save: frozenset[str]
               ) -> Derivation:
    """The derived programs of a compiled signature of `fn` for gradients of the arguments
    `wrt`."""
    key = (wrt, save)
    hit = compiled.grads.get(key)
    if hit is not None:
        return hit
    traced = compiled.grads.get("traced")
    if traced is None:
        traced = compiled.grads["traced"] = trace(compiled.typed)
    floats = [r.is_float for r in traced.results]
    every = [i for i, f in enumerate(floats) if f]
    grads: Gradients = differentiate(traced, list(wrt), every, save)
    kept = [_kept(s) for s in grads.saved]
    text = to_source(Program(f"{traced.name}_forward", _unique(_params(traced)),
                             [*traced.results, *kept], traced.env))
    d = Derivation(compiled, traced, wrt, save, text, _program(fn, text, f"{traced.name} forward"),
                   floats, grads.saved)
    compiled.grads[key] = d
    return d


def _every(fn: FusedFunction, args: tuple, kwargs: dict[str, Any]
           ) -> tuple[Derivation, list[Any], tuple[int, ...]]:
    """The derivation for every floating-point tensor argument and result of a call."""
    values = fn._bind_args(args, kwargs)
    compiled, _ = fn._lookup(values)
    runtime = compiled.runtime_args(values)
    wrt = tuple(i for i, v in enumerate(runtime) if getattr(v, "is_floating_point",
                                                             lambda: False)())
    d = derivation(fn, compiled, wrt, fn._save)
    return d, runtime, tuple(i for i, f in enumerate(d.float_results) if f)


def backward_source(fn: FusedFunction, args: tuple, kwargs: dict[str, Any]) -> tuple[str, str]:
    """FusedFunction.backward_source."""
    d, _, given = _every(fn, args, kwargs)
    return d.forward_source, d.backward(given)[0]


def backward_plan(fn: FusedFunction, args: tuple, kwargs: dict[str, Any]) -> Any:
    """FusedFunction.backward_plan: the derived backward's kernels and bytes for a call's
    shapes (its kept values and gradients stand in as uninitialised tensors)."""
    import torch

    d, runtime, given = _every(fn, args, kwargs)
    _, bwd = d.backward(given)
    device = next((v.device for v in runtime if isinstance(v, torch.Tensor)), "cpu")
    specs = d.forward._result_specs(runtime, {})
    made = [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in specs]
    results, kept = made[:d.n_results], made[d.n_results:]
    return bwd.plan(*runtime, *kept, *[results[i] for i in given])


def _program(of: FusedFunction, text: str, what: str) -> FusedFunction:
    """A derived program of `of`, made by its class (this module sits above the decorator
    and never imports it), its text registered with linecache so that plans, explain and
    tracebacks show its lines."""
    import linecache
    import textwrap
    import zlib

    # the same name in every process (generated kernels carry it, and fusile's kernel cache
    # is keyed by their text)
    name = f"<{what} {zlib.crc32(text.encode()):08x}>"
    linecache.cache[name] = (len(text), None, text.splitlines(True), name)
    return type(of)(source=Source(name, textwrap.dedent(text)))


def _params(traced: Traced) -> list[tuple[str, Node]]:
    return [(p.attrs["name"], p) for p in traced.params]


def _unique(params: list[tuple[str, Node]]) -> list[tuple[str, Node]]:
    """Parameter names made distinct from the user's (a user parameter named saved0)."""
    seen: set[str] = set()
    out = []
    for name, n in params:
        while name in seen:
            name = "_" + name
        seen.add(name)
        out.append((name, n))
    return out


def _kept(s: Node) -> Node:
    """A kept value as the forward returns it: reductions in the compute dtype."""
    if s.op not in REDUCTIONS or s.type.dtype.bits >= 32:
        return s
    from fusile.dsl.types import TensorType, f32

    return Node("astype", (s,), TensorType(f32, s.shape), {"options": {"dtype": "compute"},
                                                          "axes": ()}, s.span, s.source)


# ----------------------------------------------------------------------------- torch autograd


class Derived:
    """A compiled signature run with autograd: the derived forward inside an
    autograd.Function whose backward runs the derived backward. Called with the lowered
    program's arguments, as a backend program is (the dispatch fast path keeps one per call
    key, and the key holds which tensors require grad)."""

    def __init__(self, fn: FusedFunction, compiled: Any):
        self.fn, self.compiled = fn, compiled
        self.derivations: dict[tuple[int, ...], Derivation] = {}

    def __call__(self, runtime: list[Any]) -> list[Any]:
        import torch

        wrt = tuple(i for i, v in enumerate(runtime) if isinstance(v, torch.Tensor) and
                    v.requires_grad and v.dtype.is_floating_point)
        d = self.derivations.get(wrt)
        if d is None:
            d = self.derivations[wrt] = derivation(self.fn, self.compiled, wrt,
                                                             self.fn._save)
        return list(_Function.apply(d, *runtime))


def op_gradients(fn: FusedFunction, inputs: list[Any], grads: list[Any],
                 given: tuple[int, ...], need: list[bool], args: list[Any],
                 kwargs: dict[str, Any], results: list[Any] | None = None) -> list[Any]:
    """The custom op's gradient (dsl/torch_op.py), run on real tensors: one gradient per
    tensor of `inputs` (the call's tensors) that `need`s one, for gradients `grads` arriving
    at the results in `given`.

    `results`, where given, are the call's results as the forward returned them (None for
    one not kept). When every value the save rule keeps is one of them (a log-sum-exp the
    forward returns, or its float32 copy), the backward reads them instead of recomputing:
    the stdlib's cross-entropy keeps its lse and count this way. Otherwise, and without
    `results`, everything is recomputed (the op kept nothing)."""
    import torch

    values = fn._bind_args(tuple(args), kwargs)
    compiled, _ = fn._lookup(values)
    runtime = compiled.runtime_args(values)
    n_plain = len(compiled.runtime_params)
    targets = []  # per runtime argument: (its tensor among `inputs`, slice or None)
    for i, v in enumerate(runtime):
        p, index = (None, None) if i < n_plain else compiled.derived[i - n_plain]
        base = v if p is None else values[p]
        j = next((k for k, t in enumerate(inputs) if t is base), None)
        targets.append((j, index))
    wrt = tuple(i for i, (j, _) in enumerate(targets) if j is not None and need[j])
    out: list[Any] = [None] * len(inputs)
    kept = None
    if results is not None:
        d = derivation(fn, compiled, wrt, fn._save)
        kept = _from_results(d, results)
    if kept is None:
        d, kept = derivation(fn, compiled, wrt, frozenset()), []
    caller: list[Any] = [None] * len(compiled.result_types)
    for i, g in zip(given, grads, strict=True):
        caller[i] = g
    pairs = lowered_grads(compiled, caller, d.float_results)
    if pairs and wrt:
        _, bwd = d.backward(tuple(i for i, _ in pairs))
        gs = _as_list(bwd(*runtime, *kept, *[g for _, g in pairs]))
        for i, g in zip(wrt, gs, strict=True):
            j, index = targets[i]
            assert j is not None
            if index is None and out[j] is None:  # the usual case: the gradient as it came
                out[j] = g
                continue
            if out[j] is None:
                out[j] = torch.zeros_like(inputs[j])
            if index is None:  # out[j] is a tensor this call made: add in place
                out[j] += g
            else:  # a sliced parameter: its gradient lands in the slice
                out[j][index] += g
    return [o if o is not None else torch.zeros_like(t)
            for o, t, n in zip(out, inputs, need, strict=True) if n]


def _from_results(d: Derivation, results: list[Any]) -> list[Any] | None:
    """The values the derivation keeps, taken from the forward's results: each kept node
    is a result, or a result is its float32 copy (`_kept`'s astype of a reduction). None
    if one is not (or the results are a concat's pieces, not the lowered results)."""
    joins = d.compiled.typed.joins
    if any(j != k for k, j in enumerate(joins)) or len(results) != len(d.traced.results):
        return None
    out = []
    for s in d.saved:
        want = _kept(s)
        k = next((k for k, r in enumerate(d.traced.results) if results[k] is not None and (
            r.id == want.id or (r.op == "astype" and r.args[0].id == s.id and
                                r.type == want.type))), None)
        if k is None:
            return None
        out.append(results[k])
    return out


def lowered_grads(compiled: Any, grads: list[Any], floats: list[bool]) -> list[tuple[int, Any]]:
    """(lowered result, gradient) for the gradients of the caller's results: a returned
    concat's gradient is cut into its pieces' (views). Integer results and missing gradients
    are left out; a piece returned twice gets the sum."""
    joins = compiled.typed.joins or list(range(len(grads)))
    out: dict[int, Any] = {}
    for j, g in zip(joins, grads, strict=True):
        if g is None:
            continue
        parts = [(j, ...)] if isinstance(j, int) else j.parts
        for pos, index in parts:
            if floats[pos]:
                piece = g[index]
                out[pos] = piece if pos not in out else out[pos] + piece
    return sorted(out.items(), key=lambda kv: kv[0])


def _as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, tuple) else [out]


def _function() -> Any:
    import torch

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, d: Derivation, *runtime: Any) -> Any:
            ctx.set_materialize_grads(False)
            outs = _as_list(d.forward(*runtime))
            pieces, saved = outs[:d.n_results], outs[d.n_results:]
            results = d.compiled.assemble(pieces)
            ctx.d = d
            ctx.layout = [isinstance(r, torch.Tensor) for r in runtime]
            ctx.scalars = [r for r in runtime if not isinstance(r, torch.Tensor)]
            ctx.save_for_backward(*[r for r in runtime if isinstance(r, torch.Tensor)],
                                  *saved)
            ctx.mark_non_differentiable(*[r for r in results if not r.is_floating_point()])
            return tuple(results)

        @staticmethod
        def backward(ctx: Any, *grads: Any) -> Any:
            d: Derivation = ctx.d
            n_in = len(ctx.layout)
            pairs = lowered_grads(d.compiled, list(grads), d.float_results)
            if not pairs:
                return (None,) * (n_in + 1)
            saved = list(ctx.saved_tensors)
            tensors, kept = iter(saved[:sum(ctx.layout)]), saved[sum(ctx.layout):]
            scalars = iter(ctx.scalars)
            runtime = [next(tensors) if t else next(scalars) for t in ctx.layout]
            _, bwd = d.backward(tuple(i for i, _ in pairs))
            gs = _as_list(bwd(*runtime, *kept, *[g for _, g in pairs]))
            out: list[Any] = [None] * n_in
            for i, g in zip(d.wrt, gs, strict=True):
                out[i] = g
            return (None, *out)

    return Function


class _Lazy:
    """The autograd.Function class, made on first use (importing fusile imports no torch)."""

    cls: Any = None

    def apply(self, *args: Any) -> Any:
        if self.cls is None:
            self.cls = _function()
        return self.cls.apply(*args)


_Function = _Lazy()
