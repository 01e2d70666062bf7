"""A user's @fused function as a PyTorch custom op, for the tracers: torch.compile (Dynamo and
AOTAutograd), torch.export and make_fx see one opaque op, `torch.ops.fusile_fn.<name>`, whose
fake (meta) implementation comes from fusile's own shape and dtype inference, so none of
fusile's host code runs on fake or functional tensors. Eager calls never come here: they take
the decorator's direct path, which costs a fraction of torch.library's dispatch.

The op's schema is the same for every function: `(Tensor[] tensors, float[] floats, SymInt[]
ints, str spec) -> Tensor[]`. `spec` says where each argument goes and carries the bools.
Ints are compile-time constants in fusile (a different value is a different specialisation),
but Dynamo traces an int argument that changed between calls as a SymInt: they travel as
SymInts, and the fake specialises on each (a guard), as fusile does; floats stay runtime
values.
"""

from __future__ import annotations

import re
import threading
import weakref
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from fusile.backends.dispatch import dense_strides
from fusile.dsl.errors import SignatureError

if TYPE_CHECKING:
    from fusile.dsl.fused import FusedFunction

NAMESPACE = "fusile_fn"
_SCHEMA = "(Tensor[] tensors, float[] floats, SymInt[] ints, str spec) -> Tensor[]"
_GRAD_SPEC = "g1"  # the gradient op's spec format: a compiled graph holds it as a constant
_LOCK = threading.Lock()
_TAKEN: set[str] = set()


def traced(args: Any) -> bool:
    """Whether a trace is running: Dynamo's, or AOTAutograd's or make_fx's, which run on fake
    or functional tensors (torch.compiler.is_compiling() is False there). On every call's
    path: kept to a few hundred nanoseconds."""
    if _is_compiling is None:
        _bind_torch()
    if _is_compiling():
        return True
    for a in args:
        t = type(a)
        if t is not _Tensor and t is not _Parameter and isinstance(a, _Tensor):
            return True
    return False


def _bind_torch() -> None:
    global _is_compiling, _Tensor, _Parameter
    import torch

    _is_compiling, _Tensor, _Parameter = (torch.compiler.is_compiling, torch.Tensor,
                                          torch.nn.Parameter)


_is_compiling: Any = None  # torch's, bound on first use: importing fusile does not import torch
_Tensor: Any = None
_Parameter: Any = None


def op_name(fn: Any, name: str | None) -> str:
    """A legal, unused op name: `name`, else module and qualified name joined by '_'."""
    if name is None:
        module = getattr(fn, "__module__", None) or "fusile"
        qual = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "fn")
        name = f"{module}_{qual}"
    base = re.sub(r"\W", "_", name).strip("_") or "fn"
    if base[0].isdigit():
        base = "f_" + base
    with _LOCK:
        out, n = base, 1
        while out in _TAKEN:
            n += 1
            out = f"{base}_{n}"
        _TAKEN.add(out)
    return out


class TorchOp:
    """The custom op of one FusedFunction, defined when the function is made (before any
    trace can reach it: defining an op inside a trace is not traceable). Each op has its own
    torch.library fragment, destroyed with the function, so programs made and dropped (from
    source, in a loop) do not pile up in PyTorch's op registry; the registrations hold the
    function weakly for the same reason."""

    def __init__(self, fn: FusedFunction, name: str):
        import torch

        _bind_torch()
        self._fn = weakref.ref(fn)
        self.name = name
        qualname = f"{NAMESPACE}::{name}"
        lib = torch.library.Library(NAMESPACE, "FRAGMENT")
        lib.define(name + _SCHEMA)
        lib.impl(name, self._impl, "CompositeExplicitAutograd")
        torch.library.register_fake(qualname, self._fake, lib=lib)
        torch.library.register_autograd(qualname, self._backward, setup_context=_setup,
                                        lib=lib)
        # the gradient, its own op defined now (not when a backward is first traced: a graph
        # loaded from torch.compile's caches calls it before anything is derived)
        lib.define(name + "_backward" + _SCHEMA)
        lib.impl(name + "_backward", self._grad_impl, "CompositeExplicitAutograd")
        torch.library.register_fake(f"{qualname}_backward", self._grad_fake, lib=lib)
        self.op = getattr(getattr(torch.ops, NAMESPACE), name).default
        self.grad_op = getattr(getattr(torch.ops, NAMESPACE), name + "_backward").default
        weakref.finalize(fn, _release, lib, name).atexit = False

    def fn(self) -> FusedFunction:
        fn = self._fn()
        if fn is None:
            raise SignatureError(f"{NAMESPACE}::{self.name}: its fused function no longer "
                                 "exists (keep a reference to it while graphs use it)")
        return fn

    def __call__(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Call the op (while tracing): pack the arguments, unpack the results."""
        import torch

        tensors: list[Any] = []
        floats: list[Any] = []
        ints: list[Any] = []
        parts: list[str] = []
        for key, a in [*enumerate(args), *kwargs.items()]:
            if isinstance(a, torch.Tensor):
                tensors.append(a)
                parts.append(f"{key}=t")
            elif isinstance(a, bool):
                parts.append(f"{key}=b{int(a)}")
            elif isinstance(a, int | torch.SymInt):
                ints.append(a)
                parts.append(f"{key}=i")
            elif isinstance(a, float | torch.SymFloat):  # runtime values, traced or not
                floats.append(a)
                parts.append(f"{key}=f")
            else:
                raise SignatureError(f"{self.name}: under torch.compile, arguments must be "
                                     f"tensors, floats, ints or bools, got {type(a).__name__}")
        outs = self.op(tensors, floats, ints, ";".join(parts))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _impl(self, tensors: list[Any], floats: list[float], ints: list[int], spec: str
              ) -> list[Any]:
        args, kwargs = _unpack(spec, tensors, floats, ints)
        out = self.fn()._run(tuple(args), kwargs, check_grad=False)
        outs = list(out) if isinstance(out, tuple) else [out]
        seen: set[int] = set()
        for i, o in enumerate(outs):  # an op's results may alias neither its inputs nor each
            # other, and must have the fake's (contiguous) strides: a returned input is a
            # copy with the input's strides
            if (any(o is t for t in tensors) or id(o) in seen or
                    o.stride() != dense_strides(o.shape)):
                outs[i] = o.clone(memory_format=_contiguous_format())
            seen.add(id(outs[i]))
        return outs

    def _fake(self, tensors: list[Any], floats: list[float], ints: list[Any], spec: str
              ) -> list[Any]:
        import torch

        # a traced int is specialised on (a guard): fusile compiles each value
        args, kwargs = _unpack(spec, tensors, floats, [int(i) for i in ints])
        device = tensors[0].device if tensors else torch.device("cpu")
        return [torch.empty(shape, dtype=dtype, device=device)
                for shape, dtype in self.fn()._result_specs(args, kwargs)]

    def _backward(self, ctx: Any, grads: list[Any]) -> Any:
        """The op's gradient while tracing (AOTAutograd): the gradient op, one result per
        input tensor that needs a gradient. The op's results are the function's alone, so
        its derived backward recomputes everything from the inputs (save rule: nothing
        kept)."""
        tensors = list(ctx.saved_tensors)
        given = [i for i, g in enumerate(grads) if g is not None]
        rest = (_nones(ctx.floats), _nones(ctx.ints), None)  # the inputs' structure
        needs = ctx.needs_input_grad[0]
        need = [bool(n) and t.is_floating_point() for n, t in zip(needs, tensors, strict=True)]
        if not given or not any(need):
            return [None] * len(tensors), *rest
        spec = "|".join([ctx.spec, ",".join(map(str, given)), "".join("01"[n] for n in need),
                         _GRAD_SPEC])
        gs = iter(self.grad_op([*tensors, *[grads[i] for i in given]], ctx.floats, ctx.ints,
                               spec))
        return [next(gs) if n else None for n in need], *rest

    def _grad_call(self, tensors: list[Any], floats: list[float], ints: list[Any], spec: str
                   ) -> tuple[list[Any], list[Any], tuple[int, ...], list[bool], list, dict]:
        """The gradient op's arguments: the call's tensors, the results' gradients, which
        results they belong to, which tensors need one, and the call's arguments."""
        parts = spec.rsplit("|", 3)
        if len(parts) != 4 or parts[3] != _GRAD_SPEC:  # a graph another fusile compiled
            raise SignatureError(f"{self.name}_backward: this call comes from a graph that "
                                 "another fusile version compiled (torch.compile's cache); "
                                 "clear the cache (TORCHINDUCTOR_CACHE_DIR) and compile again")
        fwd_spec, given_text, need_text, _ = parts
        n = sum(kind == "t" for _, kind, _ in _parse(fwd_spec))
        args, kwargs = _unpack(fwd_spec, tensors[:n], floats, [int(i) for i in ints])
        given = tuple(int(i) for i in given_text.split(",")) if given_text else ()
        return tensors[:n], tensors[n:], given, [c == "1" for c in need_text], args, kwargs

    def _grad_impl(self, tensors: list[Any], floats: list[float], ints: list[int], spec: str
                   ) -> list[Any]:
        from fusile.autograd import op_gradients

        return op_gradients(self.fn(), *self._grad_call(tensors, floats, ints, spec))

    def _grad_fake(self, tensors: list[Any], floats: list[float], ints: list[Any], spec: str
                   ) -> list[Any]:
        import torch

        inputs, _, _, need, _, _ = self._grad_call(tensors, floats, ints, spec)
        return [torch.empty(t.shape, dtype=t.dtype, device=t.device)
                for t, n in zip(inputs, need, strict=True) if n]


def _contiguous_format() -> Any:
    import torch

    return torch.contiguous_format


@lru_cache(maxsize=1024)
def _parse(spec: str) -> tuple[tuple[int | str, str, Any], ...]:
    out = []
    for part in spec.split(";") if spec else ():
        key, code = part.split("=", 1)
        k: int | str = int(key) if key.isdigit() else key
        value: Any = None
        if code[0] == "b":
            value = bool(int(code[1:]))
        out.append((k, code[0], value))
    return tuple(out)


def _unpack(spec: str, tensors: list[Any], floats: list[float], ints: list[int]
            ) -> tuple[list[Any], dict]:
    ti, fi, ii = iter(tensors), iter(floats), iter(ints)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for key, kind, value in _parse(spec):
        v = next(ti) if kind == "t" else next(fi) if kind == "f" else next(ii) if kind == "i" \
            else value
        if isinstance(key, int):
            args.append(v)
        else:
            kwargs[key] = v
    return args, kwargs


def _nones(arg: Any) -> Any:
    """The gradient of a float[] or int[] argument, in the structure torch.library compares:
    a list holding numbers is one leaf (None); an empty one is an empty list."""
    return [] if isinstance(arg, list | tuple) and not arg else None


def _setup(ctx: Any, inputs: Any, output: Any) -> None:
    tensors, floats, ints, spec = inputs
    ctx.save_for_backward(*tensors)
    ctx.floats, ctx.ints, ctx.spec = floats, ints, spec


def _release(lib: Any, name: str) -> None:
    try:
        lib._destroy()  # a private API: when it changes, the op simply stays registered
    except Exception:
        return
    with _LOCK:
        _TAKEN.discard(name)
