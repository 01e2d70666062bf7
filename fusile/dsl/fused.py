"""The @fused decorator: parse once, compile once per signature, run on torch tensors."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

from fusile.backends import dispatch  # the call path's first step (it imports no stage)
from fusile.bounded import Bounded
from fusile.dsl import ast
from fusile.dsl.errors import SignatureError, Source
from fusile.dsl.inspection import Inspection
from fusile.dsl.parse_errors import guard as _guard
from fusile.dsl.parser import parse, source_of
from fusile.dsl.push import NeedStatic
from fusile.dsl.signature import (
    Annotation,
    ArgInfo,
    bindings,
    cache_key,
    check_nonempty,
    check_sizes,
    def_line,
    default_value,
    describe_arg,
    parse_annotation,
    static_sizes,
)
from fusile.dsl.torch_op import TorchOp, op_name, traced
from fusile.dsl.types import ShapeEnv, TensorType

# One compile at a time, process-wide: compiling is a one-time cost per signature, and it
# keeps first calls from several threads from building the same program twice.
_COMPILE_LOCK = threading.RLock()


class FusedFunction(Inspection):
    """A function written in fusile's DSL. Call it on torch tensors."""

    def __init__(self, fn: Callable[..., Any] | None = None, *, source: Source | None = None,
                 globals_: dict[str, Any] | None = None, name: str | None = None,
                 save: tuple[str, ...] | str = ("reductions",)):
        self._fn = fn
        self._save = _save_rule(save)
        self._source = source
        self._globals = dict(globals_ or {})
        if fn is not None:
            functools.update_wrapper(self, fn)
            self._globals = {**fn.__globals__, **_closure_vars(fn)}
        self._func: ast.FuncDef | None = None
        self._annotations: list[Annotation] | None = None
        self._cache: Bounded[tuple, Any] = Bounded()
        # per signature: the (parameter, axis) sizes it is specialised on (slices need them)
        self._static: dict[tuple, frozenset[tuple[int, int]]] = {}
        # positional calls seen before, by their layout (backends/dispatch.py)
        self._fast: Bounded[tuple, Any] = Bounded()
        # what tracers (torch.compile, export) see: one custom op, defined now, outside any trace
        self._torch_op = TorchOp(self, op_name(fn, name or (None if fn else "from_source")))

    @property
    def torch_op(self) -> Any:
        """The torch.library op (`torch.ops.fusile_fn.<name>.default`) traced calls become."""
        return self._torch_op.op

    # ------------------------------------------------------------------ the front end, once
    @property
    def __fusile_source__(self) -> Source:
        if self._source is None:
            assert self._fn is not None
            self._source = source_of(self._fn)
        return self._source

    @property
    def __fusile_funcdef__(self) -> ast.FuncDef:
        if self._func is None:
            self._func = _guard(lambda: parse(self.__fusile_source__))
        return self._func

    @property
    def __fusile_globals__(self) -> dict[str, Any]:
        return self._globals

    @property
    def params(self) -> list[str]:
        return [p.name for p in self.__fusile_funcdef__.params]

    def _annots(self) -> list[Annotation]:
        if self._annotations is None:
            src = self.__fusile_source__
            self._annotations = [parse_annotation(p.annotation, self._globals, src)
                                 for p in self.__fusile_funcdef__.params]
        return self._annotations

    # ------------------------------------------------------------------ signatures
    def _bind_args(self, args: tuple, kwargs: dict[str, Any]) -> list[Any]:
        func, src = self.__fusile_funcdef__, self.__fusile_source__
        names = [p.name for p in func.params]
        head = def_line(func)  # errors about the call point at the def line or a parameter
        if len(args) > len(names):
            raise SignatureError(f"{func.name}() takes {len(names)} arguments, got {len(args)}",
                                 head, src)
        values: list[Any] = list(args) + [_MISSING] * (len(names) - len(args))
        for k, v in kwargs.items():
            if k not in names:
                raise SignatureError(f"{func.name}() got an unexpected keyword argument {k!r}",
                                     head, src)
            if values[names.index(k)] is not _MISSING:
                raise SignatureError(f"{func.name}() got two values for {k!r}",
                                     func.params[names.index(k)].span, src)
            values[names.index(k)] = v
        for i, p in enumerate(func.params):
            if values[i] is _MISSING:
                if p.default is None:
                    raise SignatureError(f"{func.name}() is missing argument {p.name!r}",
                                         p.span, src)
                values[i] = default_value(p, self._globals, src)
        for i, ann in enumerate(self._annots()):  # an int for a float parameter is a float
            if ann.kind == "float" and type(values[i]) is int:
                values[i] = float(values[i])
        return values

    def compiled(self, *args: Any, **kwargs: Any) -> Any:
        """The compiled program for these arguments (compiling on first use)."""
        return self._lookup(self._bind_args(args, kwargs))[0]

    def _lookup(self, values: list[Any]) -> tuple[Any, list[ArgInfo]]:
        infos = []
        for v, p in zip(values, self.__fusile_funcdef__.params, strict=True):
            try:
                infos.append(describe_arg(v))
            except SignatureError as err:  # name the parameter and point at it
                raise SignatureError(f"parameter {p.name!r}: {err.message}", p.span,
                                     self.__fusile_source__) from None
        base = cache_key(infos)
        static = self._static.get(base, frozenset())
        key = (base, static_sizes(static, infos, self.params))
        hit = self._cache.get(key)
        if hit is None:
            with _COMPILE_LOCK:  # a first call from several threads compiles once
                hit = self._cache.get(key)
                if hit is None:
                    hit = _guard(lambda: self._compile(infos, base))
                    key = (base, static_sizes(self._static.get(base, frozenset()), infos,
                                              self.params))
                    self._cache.put(key, hit)
        return hit, infos

    def _compile(self, infos: list[ArgInfo], base: tuple) -> Any:
        """Compile for these arguments; a slice asks for the sizes it needs fixed (NeedStatic)
        and the signature is compiled again with them, and specialised on them from then."""
        from fusile.compiler import compile_program

        func, src = self.__fusile_funcdef__, self.__fusile_source__
        while True:
            static = self._static.get(base, frozenset())
            env = ShapeEnv()
            params = bindings(func, self._annots(), infos, src, env, static)
            try:
                return compile_program(func, src, self._globals, params, env)
            except NeedStatic as need:
                more = {(pi, axis) for pi, b in enumerate(params)
                        if isinstance(b.type, TensorType)
                        for axis, d in enumerate(b.type.shape)
                        if env.find(d) == env.find(need.sym)}
                if not more or more <= static:
                    raise AssertionError(f"cannot fix the size {need.sym}") from None
                self._static[base] = static | more
                static_sizes(self._static[base], infos, self.params)  # an int where needed

    # ------------------------------------------------------------------ running
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if traced(args) or (kwargs and traced(kwargs.values())):
            return self._torch_op(args, kwargs)  # one opaque op in the traced graph
        if kwargs:
            return self._run(args, kwargs)
        key = dispatch.call_key(args, True)  # a positional call seen before: straight to
        hit = self._fast.get(key)  # its launches (the steady state: no other frame)
        return hit(args) if hit is not None else self._run(args, kwargs, key=key)

    def _run(self, args: tuple, kwargs: dict[str, Any], check_grad: bool = True,
             key: tuple | None = None) -> Any:
        """The full path (binding, checks, lookup) of a call whose call key (`key`, when the
        caller computed it) has no entry yet; it makes the entry."""
        if key is None and not kwargs:  # a positional call seen before: to its launches
            key = dispatch.call_key(args, check_grad)
            hit = self._fast.get(key)
            if hit is not None:
                return hit(args)
        from fusile.backends import run

        values = self._bind_args(args, kwargs)
        grad = check_grad and any(getattr(v, "requires_grad", False) for v in values)
        if grad:
            import torch

            grad = torch.is_grad_enabled()
        devices = {str(v.device) for v in values if hasattr(v, "device")}
        if len(devices) > 1:
            raise SignatureError(f"{self.__fusile_funcdef__.name}() got tensors on different "
                                 f"devices: {', '.join(sorted(devices))}")
        compiled, _infos = self._lookup(values)
        shapes = {i: tuple(v.shape) for i, v in enumerate(values) if hasattr(v, "shape")}
        sizes = check_sizes(compiled.checks, shapes, self.params, self.__fusile_source__)
        check_nonempty(compiled.nonempty, sizes)
        runtime = compiled.runtime_args(values)
        if grad:  # the derived forward and backward, under torch.autograd
            from fusile import autograd

            derived = autograd.Derived(self, compiled)
            outs = _guard(lambda: derived(runtime))
            if key is not None:  # later calls with this key go straight there
                self._fast.put(key, dispatch.FastCall(compiled, derived, args, values))
            return outs[0] if len(outs) == 1 else tuple(outs)
        program = run.program_for(compiled, runtime)
        outs = run.run(compiled, runtime, program)
        if key is not None and program is not None:
            self._fast.put(key, dispatch.FastCall(compiled, program, args, values))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _result_specs(self, args: list[Any], kwargs: dict[str, Any]) -> list[tuple[list, Any]]:
        """(shape, torch dtype) of each result for these arguments, from the compiled
        program's types (no launch): the custom op's fake implementation."""
        from fusile.backends.torch_dtypes import to_torch

        values = self._bind_args(tuple(args), kwargs)
        compiled, _ = self._lookup(values)
        shapes = {i: tuple(v.shape) for i, v in enumerate(values) if hasattr(v, "shape")}
        sizes = check_sizes(compiled.checks, shapes, self.params, self.__fusile_source__)
        env = compiled.typed.env
        out = []
        for t in compiled.result_types:
            dims = [env.find(d) for d in t.shape]
            out.append(([d if isinstance(d, int) else sizes[d] for d in dims],
                        to_torch(t.dtype)))
        return out

    def __repr__(self) -> str:
        return f"<fusile.fused {getattr(self, '__name__', '?')}>"


_MISSING = object()


def _closure_vars(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return dict(inspect.getclosurevars(fn).nonlocals)
    except (TypeError, ValueError):
        return {}


def fused(fn: Callable[..., Any] | None = None, *, name: str | None = None,
          save: tuple[str, ...] | str = ("reductions",)) -> Any:
    """Mark a function as fusile DSL: `@fused def f(x, w): ...`. Under torch.compile it is
    the custom op `torch.ops.fusile_fn.<name>`, named from its module and qualified name
    unless `@fused(name="...")` says otherwise.

    On tensors that require grad it runs a derived forward and backward; `save` is what the
    forward keeps for it: "reductions" (default), "matmuls", both, or () (autodiff.py)."""
    if fn is None:
        return lambda f: FusedFunction(f, name=name, save=save)
    return FusedFunction(fn, name=name, save=save)


def _save_rule(save: tuple[str, ...] | str) -> frozenset[str]:
    rules = frozenset((save,) if isinstance(save, str) else save)
    if not rules <= {"reductions", "matmuls"}:
        raise ValueError(f"fused(save=...) takes 'reductions', 'matmuls', both or (), got {save!r}")
    return rules


def from_source(text: str, globals_: dict[str, Any] | None = None,
                filename: str = "<fusile>") -> FusedFunction:
    """A fused function from source text (what tests and generated programs use). Errors
    quote this text; unless `filename` names a file on disk, the text is also registered
    under it with linecache, so plans and explain show its lines."""
    import linecache
    import os
    import textwrap

    text = textwrap.dedent(text)
    if not os.path.exists(filename):
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    return FusedFunction(source=Source(filename, text), globals_=globals_)
