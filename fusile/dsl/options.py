"""A builtin call's options (axes, keepdims, n, dtype): constants known when compiling,
resolved by the checker (check.py) from the call's argument expressions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fusile.dsl import ast
from fusile.dsl.errors import AxisError, BuiltinCallError, DTypeError
from fusile.dsl.resolve import dtype_of, resolve_global
from fusile.dsl.types import DType, TensorType
from fusile.dsl.views import dotted as _dotted
from fusile.dsl.views import is_local

if TYPE_CHECKING:
    from fusile.dsl.check import Checker


def option(ck: Checker, fn: str, pname: str, arg: ast.Expr) -> Any:
    """The constant value of a builtin's option argument (axis, keepdims, n, dtype...)."""
    if pname == "dtype":
        return dtype_option(ck, arg)
    if fn == "arange" and isinstance(arg, ast.Call):
        ck.expr(arg)
        bound = ck.t.builtins.get(id(arg))
        if bound is None or bound.name != "size":
            raise BuiltinCallError("arange(n): n must be a constant or size(x, axis)",
                                   arg.span)
        x = ck.t.type_of(ck.t.builtin_args[id(arg)][0])
        assert isinstance(x, TensorType)
        return x.shape[bound.axes[0]]
    if isinstance(arg, ast.TupleExpr):
        return tuple(option(ck, fn, pname, item) for item in arg.items)
    if isinstance(arg, ast.Const) and arg.value is None:
        return None
    ck.expr(arg)
    if id(arg) not in ck.t.consts:
        kind = "an integer" if pname in ("axis", "n") else "a"
        raise AxisError(f"{fn}(): {pname} must be {kind} constant known when compiling",
                        arg.span)
    value = ck.t.consts[id(arg)]
    if fn == "arange" and (not isinstance(value, int) or isinstance(value, bool) or
                           value < 1):
        raise BuiltinCallError(f"arange(n): n must be a positive integer, got {value!r}",
                               arg.span)
    return value


def dtype_option(ck: Checker, arg: ast.Expr) -> DType:
    """astype's dtype: a name (bf16, 'f32', torch.float16) or another value's dtype."""
    if isinstance(arg, ast.Name) and arg.id in ck.scope:  # astype(v, x): x's dtype
        t = ck.scope[arg.id].type
        if isinstance(t, tuple):
            raise DTypeError("astype(): this name holds several values", arg.span)
        return t.dtype
    if isinstance(arg, ast.Attribute) and arg.attr == "dtype" and (
            is_local(arg, ck.scope) or not _dotted(arg)):  # astype(v, x.dtype), (a @ b).dtype
        return ck.value(arg.value).dtype
    if isinstance(arg, ast.Str) and arg.value == "compute":
        return "compute"  # type: ignore[return-value]  # resolved by astype's rule
    if isinstance(arg, ast.Str):
        text = arg.value
    elif isinstance(arg, ast.Name) and arg.id not in ck.scope:
        text = arg.id
    elif isinstance(arg, ast.Attribute) and _dotted(arg):
        found, obj = resolve_global(_dotted(arg) or "", ck.globals)
        d = dtype_of(obj) if found else None
        if d is None:
            raise DTypeError(f"{_dotted(arg)!r} is not a dtype", arg.span)
        return d
    elif isinstance(arg, (ast.Call, ast.BinOp, ast.UnaryOp, ast.Subscript, ast.IfExp)) or (
            isinstance(arg, ast.Attribute) and is_local(arg, ck.scope)):
        return ck.value(arg).dtype  # another value's dtype: astype(v, a @ b), as torch's .to
    else:
        raise DTypeError("astype(): dtype must be a dtype name such as bf16 or f32, or a "
                         "value whose dtype to take", arg.span)
    d = dtype_of(text)
    if d is None:
        found, obj = resolve_global(text, ck.globals)
        d = dtype_of(obj) if found else None
    if d is None:
        raise DTypeError(f"unknown dtype {text!r}; fusile knows bf16, f16, f32, f64, i32, "
                         "i64, bool", arg.span)
    return d
