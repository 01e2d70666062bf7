"""The builtin table: each builtin's parameters and its type rule.

A builtin's parameters are either values (tensors or scalars, lowered as code) or options
(compile-time constants: axes, keepdims, dtypes). `bind` matches a call's arguments to them;
`infer` gives the result type. Lowering rules live in lowering/to_mlir.py, keyed by the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fusile.dsl.errors import (
    AxisError,
    BuiltinCallError,
    DTypeError,
    RankError,
    ShapeMismatchError,
    Span,
)
from fusile.dsl.types import (
    DType,
    ScalarType,
    ShapeEnv,
    TensorType,
    ValueType,
    bool_,
    f32,
    i32,
    i64,
    result_dtype,
    show_shape,
)

VALUE = "value"  # a tensor or scalar operand
OPTION = "option"  # a compile-time constant


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    default: Any = ...  # ... means required


@dataclass(frozen=True)
class Builtin:
    name: str
    params: tuple[Param, ...]
    infer: Callable[[BoundCall, ShapeEnv], ValueType]
    doc: str
    nonempty: bool = False  # a reduction with no identity: its axes must not be empty


@dataclass
class BoundCall:
    """A builtin call with its arguments matched to parameters (options already constant)."""

    name: str
    span: Span
    values: list[ValueType]  # types of the value arguments, in parameter order
    value_spans: list[Span]
    options: dict[str, Any]
    axes: tuple[int, ...] = ()  # normalised reduction axes, filled by infer


def _float_of(d: DType) -> DType:
    return d if d.is_float else f32


def _tensor(call: BoundCall, i: int, what: str = "") -> TensorType:
    t = call.values[i]
    if not isinstance(t, TensorType):
        raise RankError(f"{call.name}() needs a tensor{what}, got a scalar", call.value_spans[i])
    return t


def _like(t: ValueType, dtype: DType) -> ValueType:
    return TensorType(dtype, t.shape, t.weak) if isinstance(t, TensorType) else \
        ScalarType(dtype, t.weak)


def _broadcast(call: BoundCall, env: ShapeEnv, dtype: DType,
               typed_by: list[ValueType] | None = None) -> ValueType:
    """The broadcast result; weak when every value it takes its dtype from (`typed_by`,
    default all) is weak: a Python number, or a tensor computed from numbers alone."""
    shapes = [t.shape for t in call.values if isinstance(t, TensorType)]
    weak = all(t.weak for t in (call.values if typed_by is None else typed_by))
    if not shapes:
        return ScalarType(dtype, weak)
    return TensorType(dtype, env.broadcast(shapes, call.span), weak)


def _unary_float(call: BoundCall, env: ShapeEnv) -> ValueType:
    t = call.values[0]
    if t.dtype == bool_:
        raise DTypeError(f"{call.name}() of a bool value; convert it with astype first",
                         call.value_spans[0])
    return _like(t, _float_of(t.dtype))


def _unary_same(call: BoundCall, env: ShapeEnv) -> ValueType:
    t = call.values[0]
    if t.dtype == bool_:
        raise DTypeError(f"{call.name}() of a bool value", call.value_spans[0])
    return t


def _binary(call: BoundCall, env: ShapeEnv) -> ValueType:
    dtype = result_dtype(call.values)
    if dtype == bool_:
        raise DTypeError(f"{call.name}() of bool values; use | or &", call.span)
    return _broadcast(call, env, dtype)


def _where(call: BoundCall, env: ShapeEnv) -> ValueType:
    if call.values[0].dtype != bool_:
        raise DTypeError(
            f"where() needs a bool condition, got {call.values[0].dtype}; compare first, "
            "e.g. where(x > 0, x, 0)", call.value_spans[0])
    return _broadcast(call, env, result_dtype(call.values[1:]), call.values[1:])


def normalize_axes(call: BoundCall, rank: int) -> tuple[int, ...]:
    axis = call.options.get("axis")
    if axis is None:
        return tuple(range(rank))
    axes = axis if isinstance(axis, tuple) else (axis,)
    out: list[int] = []
    for a in axes:
        if not isinstance(a, int) or isinstance(a, bool):
            raise AxisError(f"{call.name}(): axis must be an integer constant, got {a!r}",
                            call.span)
        if not -rank <= a < rank:
            raise AxisError(
                f"{call.name}(): axis {a} is out of range for a tensor of rank {rank}", call.span)
        if a % rank in out:
            raise AxisError(f"{call.name}(): axis {a} repeated", call.span)
        out.append(a % rank)
    return tuple(sorted(out))


def _reduce_shape(call: BoundCall, t: TensorType, axes: tuple[int, ...]) -> tuple:
    if call.options.get("keepdims"):
        return tuple(1 if i in axes else d for i, d in enumerate(t.shape))
    return tuple(d for i, d in enumerate(t.shape) if i not in axes)


def _reduction(kind: str) -> Callable[[BoundCall, ShapeEnv], ValueType]:
    def infer(call: BoundCall, env: ShapeEnv) -> ValueType:
        t = _tensor(call, 0)
        if t.rank == 0:
            raise RankError(f"{call.name}() of a 0-d tensor", call.value_spans[0])
        call.axes = normalize_axes(call, t.rank)
        if kind == "float":
            dtype = _float_of(t.dtype)
        elif kind == "sum":
            dtype = t.dtype if t.dtype.is_float else i64
        else:
            dtype = t.dtype
        if dtype == bool_:
            raise DTypeError(f"{call.name}() of a bool tensor", call.value_spans[0])
        return TensorType(dtype, _reduce_shape(call, t, call.axes))

    return infer


def _normalize(call: BoundCall, env: ShapeEnv) -> ValueType:
    t = _tensor(call, 0)
    if t.rank == 0:
        raise RankError(f"{call.name}() of a 0-d tensor", call.value_spans[0])
    call.axes = normalize_axes(call, t.rank)
    return TensorType(_float_of(t.dtype), t.shape)


def _astype(call: BoundCall, env: ShapeEnv) -> ValueType:
    d = call.options["dtype"]
    if d == "compute":  # the dtype arithmetic runs in: f32 for 16-bit floats, else unchanged
        d = call.options["dtype"] = call.values[0].dtype.compute
    t = call.values[0]  # a tensor converted on purpose has that dtype (never weak)
    return TensorType(d, t.shape) if isinstance(t, TensorType) else _like(t, d)


def _matmul(call: BoundCall, env: ShapeEnv) -> ValueType:
    a, b = _tensor(call, 0, " operand"), _tensor(call, 1, " operand")
    for t, sp in zip((a, b), call.value_spans, strict=True):
        if t.rank < 2:
            raise RankError(f"matmul needs operands of rank 2 or more, got rank {t.rank}", sp)
    dtype = result_dtype([a, b])
    if dtype == bool_:
        raise DTypeError("matmul of bool tensors", call.span)
    if env.unify(a.shape[-1], b.shape[-2], call.span) is None:
        raise _contraction_mismatch(a, b, call.span)
    batch = env.broadcast([a.shape[:-2], b.shape[:-2]], call.span)
    return TensorType(dtype, (*batch, env.find(a.shape[-2]), env.find(b.shape[-1])))


def _contraction_mismatch(a: TensorType, b: TensorType, span: Span) -> Exception:
    from fusile.dsl.errors import ShapeMismatchError
    from fusile.dsl.types import show_shape

    return ShapeMismatchError(
        f"matmul: inner sizes differ, {show_shape(a.shape)} @ {show_shape(b.shape)}", span)


def _expand_as(call: BoundCall, env: ShapeEnv) -> ValueType:
    x, other = call.values
    if not isinstance(other, TensorType):
        raise RankError("expand_as() takes the shape of a tensor", call.value_spans[1])
    shape = env.broadcast([x.shape if isinstance(x, TensorType) else (), other.shape],
                          call.span)
    if len(shape) != other.rank or any(env.find(a) != env.find(b)
                                       for a, b in zip(shape, other.shape, strict=True)):
        raise ShapeMismatchError("expand_as(x, other): x must broadcast to other's shape "
                                 f"{show_shape(env.resolve(other.shape))}", call.span)
    return TensorType(x.dtype, other.shape, getattr(x, "weak", False))


def _arange(call: BoundCall, env: ShapeEnv) -> ValueType:
    return TensorType(i32, (call.options["n"],))


def _one_axis(call: BoundCall, t: TensorType) -> int:
    axis = call.options.get("axis")
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise AxisError(f"{call.name}(): axis must be one integer constant, got {axis!r}",
                        call.span)
    (out,) = normalize_axes(call, t.rank)
    return out


def _index(call: BoundCall, env: ShapeEnv) -> ValueType:
    t = _tensor(call, 0)
    axis = _one_axis(call, t)
    call.axes = (axis,)
    return TensorType(i32, tuple(d if i == axis else 1 for i, d in enumerate(t.shape)))


def _size(call: BoundCall, env: ShapeEnv) -> ValueType:
    t = _tensor(call, 0)
    axis = _one_axis(call, t)
    call.axes = (axis,)
    return ScalarType(i64, weak=True)


def _b(name: str, params: list[Param], infer: Callable[..., ValueType], doc: str) -> Builtin:
    return Builtin(name, tuple(params), infer, doc)


_X = Param("x", VALUE)
_AXIS_ALL = Param("axis", OPTION, None)
_KEEP = Param("keepdims", OPTION, False)
_AXIS_LAST = Param("axis", OPTION, -1)

BUILTINS: dict[str, Builtin] = {}
for _name, _doc in [
    ("exp", "e**x"), ("exp2", "2**x"), ("log", "natural log"), ("log2", "base-2 log"),
    ("sqrt", "square root"), ("rsqrt", "1/sqrt(x)"), ("tanh", "hyperbolic tangent"),
    ("erf", "error function"), ("sigmoid", "1/(1+exp(-x))"), ("sin", "sine"), ("cos", "cosine"),
    ("log1p", "log(1+x), exact near 0"), ("expm1", "exp(x)-1, exact near 0"),
    ("floor", "round down"), ("ceil", "round up"),
]:
    BUILTINS[_name] = _b(_name, [_X], _unary_float, _doc)
BUILTINS["abs"] = _b("abs", [_X], _unary_same, "absolute value")
for _name, _doc in [("maximum", "elementwise max (NaN propagates)"),
                    ("minimum", "elementwise min (NaN propagates)")]:
    BUILTINS[_name] = _b(_name, [Param("a", VALUE), Param("b", VALUE)], _binary, _doc)
BUILTINS["where"] = _b("where", [Param("cond", VALUE), Param("a", VALUE), Param("b", VALUE)],
                       _where, "a where cond else b, elementwise")
for _name, _kind, _doc, _nonempty in [
    ("sum", "sum", "sum over axis (all axes if None)", False),
    ("mean", "float", "mean over axis", False),
    ("max", "same", "max over axis (NaN propagates)", True),
    ("min", "same", "min over axis (NaN propagates)", True),
]:
    BUILTINS[_name] = Builtin(_name, (_X, _AXIS_ALL, _KEEP), _reduction(_kind), _doc,
                              nonempty=_nonempty)
BUILTINS["var"] = _b("var", [_X, _AXIS_ALL, _KEEP, Param("correction", OPTION, 0)],
                     _reduction("float"), "variance over axis (correction=0 like numpy's ddof)")
BUILTINS["logsumexp"] = _b("logsumexp", [_X, _AXIS_LAST, _KEEP], _reduction("float"),
                           "log(sum(exp(x))) over axis, computed stably")
BUILTINS["softmax"] = _b("softmax", [_X, _AXIS_LAST], _normalize, "softmax over axis")
BUILTINS["log_softmax"] = _b("log_softmax", [_X, _AXIS_LAST], _normalize,
                             "log of softmax over axis")
BUILTINS["astype"] = _b("astype", [_X, Param("dtype", OPTION)], _astype,
                        "convert to a dtype, or to the dtype of a tensor (rounds to it)")
BUILTINS["matmul"] = _b("matmul", [Param("a", VALUE), Param("b", VALUE)], _matmul,
                        "matrix product, batch dims broadcast (same as a @ b)")
BUILTINS["arange"] = _b("arange", [Param("n", OPTION)], _arange,
                        "int32 positions 0..n-1; n is a constant or size(x, axis)")
BUILTINS["index"] = _b("index", [_X, Param("axis", OPTION)], _index,
                       "int32 position along axis, shaped to broadcast against x")
BUILTINS["expand_as"] = _b("expand_as", [_X, Param("other", VALUE)], _expand_as,
                           "x broadcast to other's shape (other's values are not read)")
BUILTINS["size"] = _b("size", [_X, Param("axis", OPTION)], _size, "the size of x along axis")
# elementwise builtins whose result is a float whatever their argument's dtype
FLOAT_RESULT = frozenset(name for name, b in BUILTINS.items() if b.infer is _unary_float)
# builtins whose result depends on their tensor argument's type, not on its values
SHAPE_ONLY = frozenset({"size", "index", "arange"})
# builtins that read only the type of some of their arguments (by position)
SHAPE_ONLY_ARGS: dict[str, frozenset[int]] = {"expand_as": frozenset({1})}


def shape_only(name: str, position: int) -> bool:
    """Whether a builtin reads only the type of its argument at `position`."""
    return name in SHAPE_ONLY or position in SHAPE_ONLY_ARGS.get(name, ())

CONSTANTS: dict[str, float] = {"inf": float("inf"), "nan": float("nan"),
                               "pi": 3.141592653589793}


def bind(b: Builtin, span: Span, args: list[Any], kwargs: dict[str, Any],
         arg_spans: dict[str, Span]) -> dict[str, Any]:
    """Match positional and keyword arguments to the builtin's parameters."""
    if len(args) > len(b.params):
        raise BuiltinCallError(
            f"{b.name}() takes at most {len(b.params)} arguments ({_sig(b)}), got {len(args)}",
            span)
    bound: dict[str, Any] = {}
    for p, a in zip(b.params, args, strict=False):
        bound[p.name] = a
    names = {p.name for p in b.params}
    for k, v in kwargs.items():
        if k not in names:
            raise BuiltinCallError(f"{b.name}() got an unexpected keyword argument {k!r}; "
                                   f"it takes {_sig(b)}", arg_spans.get(k, span))
        if k in bound:
            raise BuiltinCallError(f"{b.name}() got two values for {k!r}", arg_spans.get(k, span))
        bound[k] = v
    for p in b.params:
        if p.name not in bound:
            if p.default is ...:
                raise BuiltinCallError(f"{b.name}() is missing argument {p.name!r}; "
                                       f"it takes {_sig(b)}", span)
            bound[p.name] = p.default
    return bound


def _sig(b: Builtin) -> str:
    parts = [p.name if p.default is ... else f"{p.name}={p.default!r}" for p in b.params]
    return "(" + ", ".join(parts) + ")"


def signature(name: str) -> str:
    return name + _sig(BUILTINS[name])
