"""Call arguments -> parameter bindings, the per-signature cache key, and runtime size checks.

A signature is specialised on dtypes, ranks, which dims are 1 (broadcasting depends on it;
an axis the annotation names is an extent, symbolic even at 1) and
the values of int/bool parameters (compile-time constants, like tl.constexpr); every other size
and every float parameter is a runtime value, so new sizes reuse the compiled program.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fusile.dsl import ast
from fusile.dsl.errors import AxisError, ShapeMismatchError, SignatureError, Source, Span
from fusile.dsl.resolve import dtype_of, resolve_global
from fusile.dsl.typed import Binding
from fusile.dsl.types import (
    DType,
    ScalarType,
    ShapeEnv,
    Sym,
    TensorSpec,
    TensorType,
    f32,
    f64,
    show_shape,
)


@dataclass(frozen=True)
class Annotation:
    """A parameter's annotation. `dims` are a tensor's declared sizes (a name is a symbolic
    size, an int a fixed one); `rest` (a leading `...`) leaves the leading axes undeclared."""

    kind: str  # "tensor" | "float" | "int" | "bool" | "any"
    dtype: DType | None = None
    dims: tuple[int | str, ...] | None = None
    rest: bool = False


def parse_annotation(expr: ast.Expr | None, globals_: dict[str, Any], source: Source
                     ) -> Annotation:
    if expr is None:
        return Annotation("any")
    if isinstance(expr, ast.Name) and expr.id in ("float", "int", "bool"):
        return Annotation(expr.id)
    if isinstance(expr, ast.Name | ast.Attribute | ast.Str):
        d = _dtype(expr, globals_)
        if d is not None:
            return Annotation("tensor", d)
        if _is_tensor(expr):
            return Annotation("tensor")
    if isinstance(expr, ast.Subscript) and (_is_tensor(expr.value) or
                                            _dtype(expr.value, globals_) is not None):
        d = None if _is_tensor(expr.value) else _dtype(expr.value, globals_)
        items = expr.items
        rest = bool(items) and isinstance(items[0], ast.EllipsisLit)
        dims: list[int | str] = []
        for item in items[1:] if rest else items:
            if isinstance(item, ast.Str):
                dims.append(item.value)
            elif isinstance(item, ast.Num) and isinstance(item.value, int):
                dims.append(item.value)
            else:
                raise SignatureError("a dim in an annotation is a name in quotes or an int (a "
                                     "leading ... leaves the leading axes open)", item.span,
                                     source)
        return Annotation("tensor", d, tuple(dims), rest)
    raise SignatureError("annotation must be a dtype with dims (bf16['M', 'N']), a dtype, "
                         "Tensor[..., 'L', 'D'], or float / int / bool", expr.span, source)


def _is_tensor(expr: ast.Expr) -> bool:
    return (isinstance(expr, ast.Name) and expr.id in ("Tensor", "tensor")) or \
        (isinstance(expr, ast.Attribute) and expr.attr == "Tensor")


def _dtype(expr: ast.Expr, globals_: dict[str, Any]) -> DType | None:
    if isinstance(expr, ast.Str):
        return dtype_of(expr.value)
    name = expr.id if isinstance(expr, ast.Name) else None
    if name is not None and dtype_of(name) is not None:
        return dtype_of(name)
    parts = []
    e: ast.Expr = expr
    while isinstance(e, ast.Attribute):
        parts.append(e.attr)
        e = e.value
    if isinstance(e, ast.Name):
        found, obj = resolve_global(".".join([e.id, *reversed(parts)]), globals_)
        if found:
            return dtype_of(obj)
    return None


@dataclass(frozen=True)
class SizeCheck:
    param: int
    axis: int
    dim: int | Sym  # resolved class after checking
    span: Span | None


@dataclass(frozen=True)
class ArgInfo:
    """What the caller passed for one parameter, as much as the cache key needs."""

    kind: str  # "tensor" | "float" | "const"
    dtype: DType | None = None
    shape: tuple[int, ...] = ()
    value: Any = None


_TORCH_DTYPES: dict[Any, DType | None] = {}


def describe_arg(a: Any) -> ArgInfo:
    import torch

    if isinstance(a, torch.Tensor):
        d = _TORCH_DTYPES.get(a.dtype, ...)
        if d is ...:
            d = _TORCH_DTYPES[a.dtype] = dtype_of(a.dtype)
        if d is None:
            raise SignatureError(f"fusile does not support tensors of dtype {a.dtype}")
        return ArgInfo("tensor", d, a.shape)
    if isinstance(a, TensorSpec):
        return ArgInfo("spec", a.dtype, value=a)
    if isinstance(a, bool | int):
        return ArgInfo("const", value=a)
    if isinstance(a, float):
        return ArgInfo("float", value=a)
    raise SignatureError(f"fusile cannot take an argument of type {type(a).__name__}; pass "
                         "torch tensors, floats, ints or bools")


def concrete_shape(value: Any, sizes: dict[str, int]) -> tuple[int, ...] | None:
    """The shape of a tensor argument or of a TensorSpec whose named dims `sizes` gives."""
    if isinstance(value, TensorSpec):
        if value.dims is None:
            raise SignatureError(f"give dims for {value!r}, e.g. {value.dtype}['M', 64]")
        out = []
        for d in value.dims:
            if isinstance(d, str):
                if d not in sizes:
                    raise SignatureError(f"size {d!r} is symbolic: pass sizes={{{d!r}: ...}}")
                n = sizes[d]
                if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                    raise SignatureError(f"size {d!r} must be a non-negative int, got {n!r}")
                out.append(n)
            else:
                out.append(d)
        return tuple(out)
    return tuple(value.shape) if hasattr(value, "shape") else None


def cache_key(infos: list[ArgInfo]) -> tuple:
    key: list[Any] = []
    for a in infos:
        if a.kind == "tensor":  # a traced (SymInt) size is never 1: tracers specialise 0, 1
            key.append(("t", a.dtype, tuple(type(s) is int and s == 1 for s in a.shape)))
        elif a.kind == "spec":
            key.append(("s", a.value))
        elif a.kind == "const":
            key.append(("c", type(a.value), a.value))
        else:
            key.append(("f",))
    return tuple(key)


def static_sizes(static: frozenset[tuple[int, int]], infos: list[ArgInfo],
                 names: list[str]) -> tuple:
    """The sizes a signature is specialised on (sliced axes), for its cache key."""
    out = []
    for p, axis in sorted(static):
        a = infos[p]
        d = a.shape[axis] if a.kind == "tensor" else a.value.dims[axis]
        if a.kind == "tensor" and not isinstance(d, int):  # a tracer's SymInt: specialise
            d = int(d)  # on it (a guard), as an eager call would
        if not isinstance(d, int):
            raise SignatureError(f"{names[p]} is sliced along axis {axis}, so its size there "
                                 f"is needed when compiling: give an int, not {d!r}")
        out.append((p, axis, d))
    return tuple(out)


def bindings(func: ast.FuncDef, annotations: list[Annotation], infos: list[ArgInfo],
             source: Source, env: ShapeEnv,
             static: frozenset[tuple[int, int]] = frozenset()) -> list[Binding]:
    """Parameter bindings for the checker, from what the caller passed; the (parameter,
    axis) pairs in `static` get their size as a fixed dim. A float parameter is a float64
    value where a tensor argument is float64 (as torch computes `x * a` for a float64 x),
    else a float32 one."""
    out: list[Binding] = []
    real = ScalarType(f64) if any(a.kind in ("tensor", "spec") and a.dtype == f64
                                  for a in infos) else ScalarType(f32)
    for pi, (p, ann, a) in enumerate(zip(func.params, annotations, infos, strict=True)):
        if ann.kind in ("float", "int", "bool") and a.kind in ("tensor", "spec"):
            raise SignatureError(f"parameter {p.name!r} is annotated {ann.kind} but got a tensor",
                                 p.span, source)
        if a.kind in ("tensor", "spec"):
            t = _tensor_type(p, ann, a, source)
            fixed = {axis for q, axis in static if q == pi}
            if fixed:  # a tracer's SymInt is specialised on (a guard), as static_sizes did
                sizes = a.shape if a.kind == "tensor" else a.value.dims
                t = TensorType(t.dtype, tuple(
                    (int(sizes[i]) if a.kind == "tensor" else sizes[i]) if i in fixed else d
                    for i, d in enumerate(t.shape)), t.weak)
            out.append(Binding(t))
        elif a.kind == "float":
            if ann.kind in ("int", "bool"):
                raise SignatureError(f"parameter {p.name!r} is annotated {ann.kind} but got "
                                     f"{a.value!r}", p.span, source)
            out.append(Binding(real))
        elif ann.kind == "tensor":
            raise SignatureError(f"parameter {p.name!r} needs a tensor, got {a.value!r}",
                                 p.span, source)
        elif ann.kind == "float":  # an int passed where the function declares a float
            out.append(Binding(real))
        else:  # ints and bools are compile-time constants
            out.append(Binding(_scalar_type(a.value), a.value, is_const=True))
    return out


def _scalar_type(v: Any) -> ScalarType:
    from fusile.dsl.types import bool_, i64

    if isinstance(v, bool):
        return ScalarType(bool_)
    return ScalarType(i64) if isinstance(v, int) else ScalarType(f32)


def _tensor_type(p: ast.Param, ann: Annotation, a: ArgInfo, source: Source) -> TensorType:
    """A tensor parameter's type. A size-1 axis is a fixed 1 (it broadcasts), except where
    the annotation names it: a named axis is an extent, symbolic at every size, so a call
    with one query row compiles the kernel every length takes."""
    assert a.dtype is not None
    if ann.dtype is not None and ann.dtype != a.dtype:
        raise SignatureError(f"parameter {p.name!r} is annotated {ann.dtype} but got a "
                             f"{a.dtype} tensor", p.span, source)
    if a.kind == "spec":
        given: TensorSpec = a.value
        if given.dims is None:
            raise SignatureError(f"parameter {p.name!r}: give dims, e.g. {given.dtype}['M', 64]",
                                 p.span, source)
        dims = [Sym(d) if isinstance(d, str) else d for d in given.dims]
        return TensorType(a.dtype, tuple(dims))
    declared: list[int | str | None] = [None] * len(a.shape)
    if ann.dims is not None:
        n = len(ann.dims)
        if len(a.shape) < n if ann.rest else len(a.shape) != n:
            at_least = "at least " if ann.rest else ""
            raise SignatureError(
                f"parameter {p.name!r} is annotated with rank {at_least}{n} but got a tensor "
                f"of shape {show_shape(a.shape)}", p.span, source)
        declared[len(a.shape) - n:] = ann.dims
    shape: list[int | Sym] = []
    for i, s in enumerate(a.shape):
        named = declared[i]
        if isinstance(named, str):
            shape.append(Sym(named))
        elif s == 1:
            shape.append(1)
        elif isinstance(named, int):
            shape.append(named)
        else:
            shape.append(Sym(f"{p.name}.{i}"))
    return TensorType(a.dtype, tuple(shape))


def size_checks(param_types: list[Any], env: ShapeEnv) -> list[SizeCheck]:
    checks = []
    for pi, t in enumerate(param_types):
        if isinstance(t, TensorType):
            for axis, d in enumerate(t.shape):
                origin = env.origin.get(d) if isinstance(d, Sym) else None
                checks.append(SizeCheck(pi, axis, env.find(d), origin))
    return checks


def nonempty_checks(env: ShapeEnv) -> list[tuple[Any, Span, Source, str]]:
    """The dims that max/min reduce over, resolved: each must be nonzero at run time."""
    return [(env.find(d), span, src, what) for d, span, src, what in env.nonempty]


def check_nonempty(checks: list[tuple[Any, Span, Source, str]], sizes: dict[Sym, int]) -> None:
    for d, span, src, what in checks:
        if sizes.get(d) == 0:
            raise AxisError(f"{what}() over an empty axis (size 0 in this call): there is no "
                            "value to return (torch raises too)", span, src)


def check_sizes(checks: list[SizeCheck], shapes: dict[int, tuple[int, ...]],
                names: list[str], source: Source) -> dict[Sym, int]:
    """Bind each symbolic size from the real shapes; raise if an equality the program needs
    (from broadcasting, matmul or an annotation) does not hold."""
    bound: dict[Sym, tuple[int, int, int, Span | None]] = {}
    sizes: dict[Sym, int] = {}
    for c in checks:
        actual = shapes[c.param][c.axis]
        if isinstance(c.dim, int):
            if actual != c.dim:
                raise ShapeMismatchError(
                    f"{names[c.param]} has size {actual} along axis {c.axis}, but the program "
                    f"needs {c.dim} there", c.span, source)
            continue
        if c.dim in bound and bound[c.dim][0] != actual:
            other_size, op, oa, other_span = bound[c.dim]
            raise ShapeMismatchError(
                f"{names[c.param]} has size {actual} along axis {c.axis} but {names[op]} has "
                f"size {other_size} along axis {oa}; the program needs them equal",
                c.span or other_span, source)
        bound.setdefault(c.dim, (actual, c.param, c.axis, c.span))
        sizes[c.dim] = actual
    return sizes


def def_line(func: ast.FuncDef) -> Span:
    """The `def name(...)` line alone (a FuncDef's span covers its whole body)."""
    return Span(func.span.line, func.span.col, func.span.line, func.span.col + 3)


def default_value(p: ast.Param, globals_: dict[str, Any], source: Source) -> Any:
    from fusile.dsl.check import Checker, Typed
    from fusile.dsl.parse_errors import guard

    assert p.default is not None
    checker = Checker(Typed(ast.FuncDef(p.span, "", (), ()), source, ShapeEnv()), globals_)
    b = guard(lambda: checker.binding(p.default))  # type: ignore[arg-type]
    if not b.is_const:
        raise SignatureError("a parameter default must be a constant", p.default.span, source)
    return b.const
