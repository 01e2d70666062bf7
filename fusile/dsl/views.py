"""Indexing and attributes in the checker: `x[:, None]`, `x[..., None]`, `.T` (views, not
copies: lowering turns them into indexing maps) and dotted names that resolve to globals."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusile.dsl import ast, slicing, spellings
from fusile.dsl.errors import RankError, UnsupportedSyntaxError
from fusile.dsl.resolve import resolve_global
from fusile.dsl.types import TensorType, ValueType

if TYPE_CHECKING:
    from fusile.dsl.check import Binding, Checker


def dotted(e: ast.Expr) -> str | None:
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Attribute):
        base = dotted(e.value)
        return None if base is None else f"{base}.{e.attr}"
    return None



def root_is_global(e: ast.Expr, scope: dict[str, Binding]) -> bool:
    while isinstance(e, ast.Attribute):
        e = e.value
    return isinstance(e, ast.Name) and e.id not in scope



def is_local(e: ast.Attribute, scope: dict[str, Binding]) -> bool:
    """Whether `a.b` is an attribute of a value (x.shape), not a dotted global (torch.exp)."""
    return not (dotted(e) and root_is_global(e, scope))


def _is_shape(e: ast.Expr, ck: Checker) -> bool:
    return isinstance(e, ast.Attribute) and e.attr == "shape" and is_local(e, ck.scope)


def subscript(ck: Checker, e: ast.Subscript) -> ValueType | tuple[ValueType, ...]:
    if _is_shape(e.value, ck):  # x.shape[i] is size(x, i)
        assert isinstance(e.value, ast.Attribute)
        if len(e.items) != 1 or isinstance(e.items[0], ast.Slice | ast.EllipsisLit):
            raise UnsupportedSyntaxError("x.shape takes one axis here, x.shape[i]", e.span)
        x = e.value.value
        return ck.desugar(e, ast.Call(e.span, ast.Name(e.span, "size"), (x, e.items[0]), ()))
    if isinstance(e.value, ast.Call) and len(e.items) == 1 and isinstance(e.items[0], ast.Num) \
            and e.items[0].value in (0, 1):  # torch.max(x, dim)[0]: the values
        core = spellings.extreme_values(e.value, ("values", "indices")[int(e.items[0].value)],
                                        e.span)
        if core is not None:
            return ck.desugar(e, core)
    if not slicing.is_plain(e.items):
        return slicing.subscript(ck, e)
    t = ck.value(e.value)
    if not isinstance(t, TensorType):
        raise RankError("only tensors can be indexed", e.value.span)
    items = list(e.items)
    n_ell = sum(isinstance(i, ast.EllipsisLit) for i in items)
    if n_ell > 1:
        raise UnsupportedSyntaxError("at most one '...' in an index", e.span)
    n_slices = sum(isinstance(i, ast.Slice) for i in items)
    if n_slices > t.rank:
        raise RankError(f"too many indices for a tensor of rank {t.rank}", e.span)
    dims: list[int | None] = []
    src = 0
    for i in items:
        if isinstance(i, ast.Slice):
            dims.append(src)
            src += 1
        elif isinstance(i, ast.EllipsisLit):
            fill = t.rank - n_slices
            dims.extend(range(src, src + fill))
            src += fill
        else:
            dims.append(None)
    dims.extend(range(src, t.rank))
    ck.t.views[id(e)] = tuple(dims)
    return TensorType(t.dtype, tuple(1 if d is None else t.shape[d] for d in dims))


def attribute(ck: Checker, e: ast.Attribute) -> ValueType | tuple[ValueType, ...]:
    local = is_local(e, ck.scope)
    if local and e.attr == "ndim":
        t = ck.value(e.value)
        return ck.desugar(e, ast.Num(e.span, t.rank if isinstance(t, TensorType) else 0))
    if local and e.attr in ("shape", "dtype"):
        what = ("a tuple, which fusile has no value for: index it, x.shape[-1], or write "
                "x.size(-1)" if e.attr == "shape" else
                "a dtype, not a value: use it in astype(y, x.dtype) or y.to(x.dtype)")
        raise UnsupportedSyntaxError(f"x.{e.attr} is {what}", e.span)
    if e.attr in ("T", "mT") and local:
        t = ck.value(e.value)
        if not isinstance(t, TensorType) or t.rank < 2:
            raise RankError(".T needs a tensor of rank 2 or more", e.span)
        dims = (*range(t.rank - 2), t.rank - 1, t.rank - 2)
        ck.t.views[id(e)] = dims
        return TensorType(t.dtype, tuple(t.shape[d] for d in dims))
    if e.attr in ("values", "indices") and isinstance(e.value, ast.Call):
        core = spellings.extreme_values(e.value, e.attr, e.span)  # torch.max(x, dim).values
        if core is not None:
            return ck.desugar(e, core)
    name = dotted(e)
    if name and root_is_global(e, ck.scope):
        found, obj = resolve_global(name, ck.globals)
        if found and isinstance(obj, bool | int | float):
            return ck._const(e, obj)
    hint = "; use size(x, axis)" if e.attr == "shape" else ""
    hint = "; use astype(x, dtype)" if e.attr in ("astype", "to", "float", "half") else hint
    raise UnsupportedSyntaxError(f"attribute access ('.{e.attr}') is not supported{hint}",
                                 e.span)
