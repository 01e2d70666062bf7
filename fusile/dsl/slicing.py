"""Slices and integer indices: `x[..., :h]`, `x[1::2]`, `m[:, 0]`, `x[..., -1]`.

A slice never copies. The checker pushes it down through elementwise math to the parameters
the value is computed from (`(x * w)[..., :h]` is `x[..., :h] * w[..., :h]`, a size-1 axis
staying as it is), and each sliced parameter becomes an extra kernel argument: a strided torch
view of the caller's tensor, made at call time. So a slice costs no kernel and no HBM traffic
beyond the elements it reads.

Bounds are constants when compiling: ints, int parameters, and sizes (`size(x, -1) // 2`,
`x.shape[-1] // 2`). An axis that is sliced, or whose size a bound reads, is compiled for its
size (the signature is specialised on it, as for a dim of size 1), so the slice's extent is
known and an out-of-range bound is a located error.

How a slice is pushed through values to the parameters (views and concats included) is
push.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fusile.dsl import ast
from fusile.dsl.errors import AxisError, UnsupportedSyntaxError
from fusile.dsl.push import KEEP, NeedStatic, Op, push
from fusile.dsl.types import Sym, TensorSpec, TensorType

if TYPE_CHECKING:
    from fusile.dsl.check import Checker


def is_plain(items: tuple[ast.Expr, ...]) -> bool:
    """Only `:`, None and `...`: a view the existing indexing maps express."""
    return all(isinstance(i, ast.EllipsisLit) or (isinstance(i, ast.Slice) and i.is_full) or
               (isinstance(i, ast.Const) and i.value is None) for i in items)


def torch_index(ops: tuple[Op, ...]) -> tuple[Any, ...]:
    """The index that makes the view at call time: x[torch_index(ops)]."""
    return tuple(slice(None) if o[0] == "keep" else slice(o[1], o[2], o[3]) if o[0] == "slice"
                 else o[1] for o in ops)


def derived_spec(spec: TensorSpec, index: tuple[Any, ...]) -> TensorSpec:
    """An AOT signature's view: the dims a slice keeps (a sliced dim is an int by then)."""
    assert spec.dims is not None
    dims: list[Any] = []
    for d, i in zip(spec.dims, index, strict=True):
        if isinstance(i, slice):
            dims.append(d if i == slice(None) else len(range(*i.indices(int(d)))))
    return TensorSpec(spec.dtype, tuple(dims))


def _bound(ck: Checker, e: ast.Expr | None, what: str) -> int | None:
    if e is None:
        return None
    ck.value(e)
    v = ck.t.consts.get(id(e))
    if v is None:
        for sub in _walk(ck, e):  # a size read when compiling: specialise on it, compile again
            call = ck.t.builtins.get(id(sub))
            if call is not None and call.name == "size":
                x = ck.t.type_of(ck.t.builtin_args[id(sub)][0])
                assert isinstance(x, TensorType)
                d = ck.t.env.find(x.shape[call.axes[0]])
                if isinstance(d, Sym):
                    raise NeedStatic(d)
        raise UnsupportedSyntaxError(f"a slice's {what} must be a constant known when "
                                     "compiling: an int, an int parameter or a size such as "
                                     "size(x, -1) // 2", e.span)
    if not isinstance(v, int) or isinstance(v, bool):
        raise AxisError(f"a slice's {what} must be an integer, got {v!r}", e.span)
    return v


def _walk(ck: Checker, e: Any) -> list[Any]:
    """e and the nodes under it, through the definitions of the locals it names."""
    out = [e]
    if ck.t.local_defs.get(id(e)) is not None:
        out.extend(_walk(ck, ck.t.local_defs[id(e)]))
    if id(e) in ck.t.desugared:
        out.extend(_walk(ck, ck.t.desugared[id(e)]))
    for v in vars(e).values() if isinstance(e, ast.Node) else ():
        for c in v if isinstance(v, tuple) else (v,):
            if isinstance(c, ast.Node):
                out.extend(_walk(ck, c))
    return out


def subscript(ck: Checker, e: ast.Subscript) -> Any:
    t = ck.value(e.value)
    if not isinstance(t, TensorType):
        raise UnsupportedSyntaxError("only tensors can be indexed", e.value.span)
    items = list(e.items)
    if sum(isinstance(i, ast.EllipsisLit) for i in items) > 1:
        raise UnsupportedSyntaxError("at most one '...' in an index", e.span)
    consuming = [i for i in items if not isinstance(i, ast.EllipsisLit) and
                 not (isinstance(i, ast.Const) and i.value is None)]
    if len(consuming) > t.rank:
        raise AxisError(f"too many indices for a tensor of rank {t.rank}", e.span)
    ops: list[Op] = []
    post: list[ast.Expr] = []  # what stays to do after the slice: None axes, as a plain view
    for item in items:
        if isinstance(item, ast.EllipsisLit):
            fill = t.rank - len(consuming)
            ops.extend([KEEP] * fill)
            post.extend(ast.Slice(item.span) for _ in range(fill))
        elif isinstance(item, ast.Const) and item.value is None:
            post.append(item)
        else:
            o = _op(ck, item, t.shape[len(ops)])
            ops.append(o)
            if o[0] != "index":
                post.append(ast.Slice(item.span))
    ops.extend([KEEP] * (t.rank - len(ops)))
    core = push(ck, e.value, tuple(ops), e)
    if any(isinstance(p, ast.Const) for p in post):
        core = ast.Subscript(e.span, core, tuple(post))
    return ck.desugar(e, core)


def _op(ck: Checker, item: ast.Expr, dim: Any) -> Op:
    if isinstance(item, ast.Slice) and item.is_full:
        return KEEP
    d = ck.t.env.find(dim)
    if isinstance(item, ast.Slice):
        start, stop = _bound(ck, item.lower, "start"), _bound(ck, item.upper, "stop")
        step = _bound(ck, item.step, "step")
        if isinstance(d, Sym):
            raise NeedStatic(d)
        if step is not None and step < 1:
            raise AxisError("a slice's step must be a positive integer (torch refuses "
                            "negative steps too)", item.span)
        # bounds out of range clamp and a slice may be empty, as in torch and numpy
        s, stop_, st = slice(start, stop, step).indices(d)
        if not range(s, stop_, st):
            s = stop_ = min(s, d)
        return KEEP if (s, stop_, st) == (0, d, 1) else ("slice", s, stop_, st)
    i = _bound(ck, item, "index")
    if isinstance(d, Sym):
        raise NeedStatic(d)
    assert i is not None
    if not -d <= i < d:
        raise AxisError(f"index {i} is out of range for an axis of size {d}", item.span)
    return ("index", i % d)
