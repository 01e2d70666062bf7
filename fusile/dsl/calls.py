"""Calls in the checker: builtins, fusile's own spellings of torch functions, torch. / F.
prefixed calls and methods (rewritten by spellings.py), other @fused functions (inlined) and
math.* on constants (folded)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fusile.dsl import ast, concat, inline, spellings
from fusile.dsl.builtins import BUILTINS
from fusile.dsl.errors import BuiltinCallError, UnknownNameError, UnsupportedSyntaxError
from fusile.dsl.resolve import resolve_global
from fusile.dsl.views import dotted as _dotted
from fusile.dsl.views import root_is_global as _root_is_global

if TYPE_CHECKING:
    from fusile.dsl.check import Checker, MultiType
    from fusile.dsl.types import ValueType


def call(ck: Checker, e: ast.Call) -> ValueType | MultiType:
    kwargs = {k.name: k.value for k in e.kwargs}
    if isinstance(e.func, ast.Name) and e.func.id not in ck.scope:
        if e.func.id in concat.NAMES:
            return concat.call(ck, e, e.func.id)
        if e.func.id in BUILTINS:
            return ck.builtin_call(e, e.func.id, list(e.args), kwargs)
        if e.func.id in spellings.EXTRAS:
            return ck.desugar(e, spellings.extra(e, e.func.id))
        found, obj = resolve_global(e.func.id, ck.globals)
    elif isinstance(e.func, ast.Attribute) and not _root_is_global(e.func, ck.scope):
        return ck.desugar(e, spellings.method(ck, e))
    elif isinstance(e.func, ast.Attribute) and _dotted(e.func) is not None:
        if _is_torch(_root_name(e.func), ck.globals):
            return ck.desugar(e, spellings.torch_function(ck, e, e.func.attr))
        found, obj = resolve_global(_dotted(e.func) or "", ck.globals)
    else:
        raise UnsupportedSyntaxError("only builtins and @fused functions can be called",
                                     e.func.span)
    if not found:
        name = _dotted(e.func) or "?"
        raise UnknownNameError(f"unknown function {name!r}{_suggest(name)}", e.func.span)
    builtin_name = getattr(obj, "__fusile_builtin__", None)
    if builtin_name in concat.NAMES:
        return concat.call(ck, e, builtin_name)
    if builtin_name is not None:
        return ck.builtin_call(e, builtin_name, list(e.args), kwargs)
    if hasattr(obj, "__fusile_funcdef__"):
        return inline.inline(ck, e, obj, kwargs)
    if callable(obj) and str(getattr(obj, "__module__", None) or "").startswith("torch"):
        return ck.desugar(e, spellings.torch_function(ck, e, obj.__name__))
    if getattr(obj, "__module__", None) == "math" and callable(obj) and not kwargs:
        return fold_math(ck, e, obj)
    if obj is float and len(e.args) == 1 and not kwargs:  # float("-inf"), as torch code has
        return _float_constant(ck, e)
    raise UnsupportedSyntaxError(
        f"{_dotted(e.func)!r} is a Python {type(obj).__name__}, not a fusile builtin or an "
        "@fused function", e.func.span)


def fold_math(ck: Checker, e: ast.Call, fn: Any) -> ValueType:
    """math.sqrt(2.0) and friends on constants are folded when compiling."""
    values = []
    for a in e.args:
        ck.value(a)
        if id(a) not in ck.t.consts:
            raise UnsupportedSyntaxError(
                f"{_dotted(e.func)}() runs in Python, so its arguments must be constants; "
                "use the fusile builtin of the same name on tensors", a.span)
        values.append(ck.t.consts[id(a)])
    try:
        return ck._const(e, fn(*values))
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise BuiltinCallError(f"{_dotted(e.func)}() failed on constants: {exc}",
                               e.span) from None


def _float_constant(ck: Checker, e: ast.Call) -> ValueType:
    """float(text) or float(constant), folded when compiling."""
    (a,) = e.args
    if isinstance(a, ast.Str):
        try:
            return ck._const(e, float(a.value))
        except ValueError:
            raise BuiltinCallError(f"float({a.value!r}) is not a number", a.span) from None
    return fold_math(ck, e, float)


def _root_name(e: ast.Expr) -> str:
    while isinstance(e, ast.Attribute):
        e = e.value
    assert isinstance(e, ast.Name)
    return e.id


def _is_torch(root: str, globals_: dict[str, Any]) -> bool:
    """Whether the global `root` is torch or one of its modules (torch.nn.functional as F)."""
    import types

    found, obj = resolve_global(root, globals_)
    return found and isinstance(obj, types.ModuleType) and obj.__name__.split(".")[0] == "torch"


def _suggest(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name.split(".")[-1], list(BUILTINS), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
