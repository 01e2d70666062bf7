"""Pushing an index down a value: the rewrite behind slices, views and concats.

`push(ck, e, ops)` is `e` indexed by per-axis ops (keep, a slice, an integer index), rewritten
so that only parameters are indexed: through elementwise math (a size-1 axis of an operand
stays whole), locals, views (new axes of 1, transposes: the view is made again over the
indexed source) and concats (the pieces the index covers, each indexed; a range across a seam
is a concat of the parts). Each indexed parameter becomes a derived argument of the lowered
function: a strided view of the caller's tensor (slicing.py checks the subscripts; concat.py
the concat calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fusile.dsl import ast
from fusile.dsl.errors import ShapeMismatchError, UnsupportedSyntaxError
from fusile.dsl.typed import Binding
from fusile.dsl.types import ScalarType, Sym, TensorType, result_dtype, show_shape

if TYPE_CHECKING:
    from fusile.dsl.check import Checker

Op = tuple[Any, ...]  # per source axis: ("keep",) | ("slice", start, stop, step) | ("index", i)
KEEP: Op = ("keep",)
ELEMENTWISE = {"exp", "exp2", "log", "log2", "sqrt", "rsqrt", "tanh", "erf", "sigmoid", "sin",
               "cos", "log1p", "expm1", "floor", "ceil", "abs", "maximum", "minimum", "where",
               "astype"}


class NeedStatic(Exception):
    """Raised while checking: compile again with this symbolic size bound to its value."""

    def __init__(self, sym: Sym):
        super().__init__(sym)
        self.sym = sym


def sliced_shape(shape: tuple[Any, ...], ops: tuple[Op, ...]) -> tuple[Any, ...]:
    out = []
    for d, o in zip(shape, ops, strict=True):
        if o[0] == "keep":
            out.append(d)
        elif o[0] == "slice":
            out.append(len(range(o[1], o[2], o[3])))
    return tuple(out)


def push(ck: Checker, e: ast.Expr, ops: tuple[Op, ...], at: ast.Subscript) -> ast.Expr:
    """`e` indexed by ops, rewritten so that only parameters are sliced."""
    if all(o == KEEP for o in ops):
        return e
    t = ck.t.types[id(e)]
    if isinstance(t, ScalarType):
        return e
    if id(e) in ck.t.desugared:
        return push(ck, ck.t.desugared[id(e)], ops, at)
    if isinstance(e, ast.Name):
        if id(e) not in ck.t.local_defs:
            return _leaf(ck, e, ops, at)
        defined = ck.t.local_defs[id(e)]
        if defined is None:
            raise UnsupportedSyntaxError(f"cannot slice {e.id!r}, one of several values a "
                                         "call returned; slice that call's inputs", at.span)
        return push(ck, defined, ops, at)
    if id(e) in ck.t.concats:
        return _push_concat(ck, e, ops, at)
    if id(e) in ck.t.views:
        return _push_view(ck, e, ops, at)  # type: ignore[arg-type]
    if isinstance(e, ast.BinOp) and e.op != "matmul":
        return ast.BinOp(e.span, e.op, _operand(ck, e.left, ops, at),
                         _operand(ck, e.right, ops, at))
    if isinstance(e, ast.Compare):
        return ast.Compare(e.span, e.op, _operand(ck, e.left, ops, at),
                           _operand(ck, e.right, ops, at))
    if isinstance(e, ast.UnaryOp):
        return ast.UnaryOp(e.span, e.op, _operand(ck, e.operand, ops, at))
    call = ck.t.builtins.get(id(e))
    if isinstance(e, ast.Call) and call is not None and call.name in ELEMENTWISE:
        values = {id(v) for v in ck.t.builtin_args[id(e)]}
        args = tuple(_operand(ck, a, ops, at) if id(a) in values else a for a in e.args)
        kwargs = tuple(ast.Keyword(k.span, k.name, _operand(ck, k.value, ops, at))
                       if id(k.value) in values else k for k in e.kwargs)
        return ast.Call(e.span, e.func, args, kwargs)
    if call is not None and call.name in ("index", "arange"):
        return _push_positions(ck, e, call.axes[0] if call.name == "index" else 0, ops)
    if isinstance(e, ast.Call) and call is not None and call.name in REDUCTIONS:
        pushed = _push_reduction(ck, e, call.name, call.axes, bool(call.options.get(
            "keepdims")), ops, at)
        if pushed is not None:
            return pushed
    if not at.items:  # no slice of the user's: a concat's seams cut this value
        raise UnsupportedSyntaxError(
            "this value meets a concat or stack along the axis it joins on, so fusile must "
            "cut it at the seams, which it does for parameters, elementwise math, views, "
            "concats and reductions along other axes, not yet for a reduction along that "
            "axis or a matmul; concatenate after combining with it, or make it from the "
            "concat's pieces", e.span)
    raise UnsupportedSyntaxError(
        "slicing this value is not supported yet: fusile slices parameters, elementwise "
        "math, views, concats, and reductions along the axes they keep; slice the inputs "
        "of the reduction or matmul instead", e.span)


REDUCTIONS = {"sum", "mean", "max", "min", "var", "logsumexp", "softmax", "log_softmax"}


def _push_reduction(ck: Checker, e: ast.Call, name: str, axes: tuple[int, ...], keepdims: bool,
                    ops: tuple[Op, ...], at: ast.Subscript) -> ast.Expr | None:
    """A reduction (or softmax) sliced along axes it keeps: the same call of its input
    sliced there (`sum(x, axis=0)[a:b]` is `sum(x[:, a:b], axis=0)`). None where an op cuts
    an axis it reduces (or a softmax's axis), or drops an axis (an integer index)."""
    x = ck.t.builtin_args[id(e)][0]
    xt = ck.t.types[id(x)]
    if not isinstance(xt, TensorType):
        return None
    shaped = name in ("softmax", "log_softmax")  # the result has x's shape
    kept = list(range(xt.rank)) if shaped or keepdims else \
        [i for i in range(xt.rank) if i not in axes]
    x_ops = [KEEP] * xt.rank
    for axis, o in zip(kept, ops, strict=True):
        if o == KEEP:
            continue
        if o[0] != "slice" or axis in axes:
            return None
        x_ops[axis] = o
    piece = push(ck, x, tuple(x_ops), at)
    return ast.Call(e.span, e.func, tuple(piece if a is x else a for a in e.args), tuple(
        ast.Keyword(k.span, k.name, piece) if k.value is x else k for k in e.kwargs))


def _operand(ck: Checker, e: ast.Expr, ops: tuple[Op, ...], at: ast.Subscript) -> ast.Expr:
    """An operand of a broadcasting op, indexed by the result's ops: right-aligned, and a
    size-1 axis stays whole (it broadcasts to the slice as it did to the axis)."""
    t = ck.t.types[id(e)]
    if not isinstance(t, TensorType):
        return e
    mine = []
    for d, o in zip(t.shape, ops[len(ops) - t.rank:], strict=True):
        if ck.t.env.find(d) == 1 and o != KEEP:
            o = KEEP if o[0] == "slice" else ("index", 0)
        mine.append(o)
    return push(ck, e, tuple(mine), at)


def _leaf(ck: Checker, e: ast.Name, ops: tuple[Op, ...], at: ast.Subscript) -> ast.Expr:
    params = [p.name for p in ck.t.func.params]
    if ck.depth > 0:
        raise UnsupportedSyntaxError(
            "slicing a parameter of a @fused function that another one calls is not supported "
            "yet; slice it in the caller", at.span)
    if e.id in params:
        p = params.index(e.id)
    else:  # a slice of a slice: one view of the parameter, the two composed
        inner = next((k for k, (name, _) in ck.t.derived.items() if name == e.id), None)
        if inner is None:
            raise UnsupportedSyntaxError(f"cannot slice {e.id!r} here", at.span)
        p, ops = inner[0], compose(inner[1], ops)
    key = (p, ops)
    if key not in ck.t.derived:
        t = ck.t.param_types[p]
        assert isinstance(t, TensorType)
        name = f"{params[p]}[{len(ck.t.derived)}]"  # not an identifier: it clashes with no name
        ck.t.derived[key] = (name, TensorType(t.dtype, sliced_shape(t.shape, ops), t.weak))
        ck.scope[name] = Binding(ck.t.derived[key][1])
    return ast.Name(e.span, ck.t.derived[key][0])


def compose(first: tuple[Op, ...], then: tuple[Op, ...]) -> tuple[Op, ...]:
    """Per source axis, `first` then `then` (given per axis of first's view) as one op: the
    view's element k of an axis sliced (s, stop, step) is the source's s + k * step."""
    out: list[Op] = []
    later = iter(then)
    for o in first:
        if o[0] == "index":  # the view has no such axis
            out.append(o)
            continue
        n = next(later)
        if o == KEEP:
            out.append(n)
        elif n == KEEP:
            out.append(o)
        elif n[0] == "index":
            out.append(("index", o[1] + n[1] * o[3]))
        else:
            out.append(("slice", o[1] + n[1] * o[3], o[1] + n[2] * o[3], o[3] * n[3]))
    return tuple(out)


# ----------------------------------------------------------------------------- concats and views
# (concat.py checks a concat call; a slice of one picks its pieces)


@dataclass(frozen=True)
class Concat:
    """A checked concat (Typed.concats, by id of its node): non-empty pieces along `axis`."""

    axis: int
    pieces: tuple[ast.Expr, ...]
    offsets: tuple[int, ...]  # where each piece starts along the axis; the total last


def make_concat(ck: Checker, at: ast.Node, pieces: list[ast.Expr], axis: int) -> ast.Expr:
    """A checked concat of typed pieces along `axis`: the single piece itself when the
    others are empty (the first when all are), else a node the checker knows as a Concat."""
    types = [ck.value(p) for p in pieces]
    dtype = result_dtype(types)  # torch.cat promotes: pieces of other dtypes are cast
    pieces = [p if t.dtype == dtype else ast.Call(p.span, ast.Name(p.span, "astype"), (
        p, ast.Str(p.span, dtype.name)), ()) for p, t in zip(pieces, types, strict=True)]
    types = [ck.value(p) for p in pieces]
    first = types[0]
    assert isinstance(first, TensorType)
    env = ck.t.env
    for p, t in zip(pieces, types, strict=True):
        assert isinstance(t, TensorType)
        if t.rank != first.rank:
            raise ShapeMismatchError(f"concat's pieces must have one rank, got "
                                     f"{show_shape(first.shape)} and {show_shape(t.shape)}",
                                     p.span)
        for a in range(t.rank):
            if a != axis and env.unify(first.shape[a], t.shape[a], p.span) is None:
                raise ShapeMismatchError(
                    f"concat along axis {axis}: the pieces differ on axis {a}, "
                    f"{show_shape(env.resolve(first.shape))} and "
                    f"{show_shape(env.resolve(t.shape))}", p.span)
    sizes = []
    for t in types:
        assert isinstance(t, TensorType)
        d = env.find(t.shape[axis])
        if isinstance(d, Sym):
            raise NeedStatic(d)  # compile again with the pieces' sizes fixed
        sizes.append(d)
    kept = [(p, n) for p, n in zip(pieces, sizes, strict=True) if n > 0]
    if len(kept) == 1:
        return kept[0][0]
    if not kept:  # torch.cat of empty pieces: empty along the axis
        return pieces[0]
    offsets = [0]
    for _, n in kept:
        offsets.append(offsets[-1] + n)
    node = ast.Call(at.span, ast.Name(at.span, "concat"), tuple(p for p, _ in kept), ())
    ck.t.concats[id(node)] = Concat(axis, tuple(p for p, _ in kept), tuple(offsets))
    shape = tuple(offsets[-1] if a == axis else env.find(first.shape[a])
                  for a in range(first.rank))
    ck.t.types[id(node)] = TensorType(first.dtype, shape, all(
        t.weak for t in types if isinstance(t, TensorType)))
    return node


def make_view(ck: Checker, x: ast.Expr, dims: tuple[int | None, ...]) -> ast.Expr:
    """A checked view of x: result axis k is x's axis dims[k], or a new axis of 1 (None)."""
    t = ck.value(x)
    assert isinstance(t, TensorType)
    node = ast.Subscript(x.span, x, ())
    ck.t.views[id(node)] = dims
    ck.t.types[id(node)] = TensorType(t.dtype, tuple(1 if d is None else t.shape[d]
                                                     for d in dims), t.weak)
    return node


def _push_concat(ck: Checker, e: ast.Expr, ops: tuple[Op, ...], at: ast.Subscript
                 ) -> ast.Expr:
    """A concat indexed by ops (per axis of e): the pieces it covers, each indexed."""
    info = ck.t.concats[id(e)]
    axis = info.axis
    op = ops[axis]
    ranges = zip(info.pieces, info.offsets, info.offsets[1:], strict=False)
    if op[0] == "index":
        p, off = next((p, lo) for p, lo, hi in ranges if lo <= op[1] < hi)
        return push(ck, p, _with(ops, axis, ("index", op[1] - off)), at)
    start, stop, step = (0, info.offsets[-1], 1) if op == KEEP else op[1:]
    picked = []
    for p, lo, hi in ranges:
        first = start if start >= lo else start + -(-(lo - start) // step) * step
        if first < min(stop, hi):
            mine: Op = ("slice", first - lo, min(stop, hi) - lo, step)
            if mine == ("slice", 0, hi - lo, 1):
                mine = KEEP
            picked.append(push(ck, p, _with(ops, axis, mine), at))
    kept_before = sum(1 for o in ops[:axis] if o[0] != "index")
    return make_concat(ck, at, picked, kept_before)


def _push_view(ck: Checker, e: ast.Subscript | ast.Attribute, ops: tuple[Op, ...],
              at: ast.Subscript) -> ast.Expr:
    """A view (new axes of 1, transposes) indexed by ops: its source indexed, viewed again."""
    dims = ck.t.views[id(e)]
    src = ck.t.types[id(e.value)]
    assert isinstance(src, TensorType)
    src_ops = [KEEP] * src.rank
    for o, d in zip(ops, dims, strict=True):
        if d is not None:
            src_ops[d] = o
    inner = push(ck, e.value, tuple(src_ops), at)
    position, k = {}, 0
    for d, o in enumerate(src_ops):
        if o[0] != "index":
            position[d], k = k, k + 1
    new = tuple(None if d is None else position[d] for o, d in zip(ops, dims, strict=True)
                if o[0] != "index")
    return make_view(ck, inner, new)


def _push_positions(ck: Checker, e: ast.Expr, axis: int, ops: tuple[Op, ...]) -> ast.Expr:
    """index(x, axis) or arange(n) indexed by ops: positions along `axis` (the other axes
    have size 1), so a slice (start, stop, step) of them is start + step * arange(its
    length), viewed to the same axes; an integer index i is the number i."""
    op = ops[axis]
    if op[0] == "index":
        return ast.Num(e.span, op[1])
    if all(o == KEEP for o in ops):
        return e
    t = ck.t.type_of(e)
    assert isinstance(t, TensorType)
    start, stop, step = (0, ck.t.env.find(t.shape[axis]), 1) if op == KEEP else op[1:]
    if not isinstance(stop, int):
        raise NeedStatic(stop)
    n = ast.Num(e.span, len(range(start, stop, step)))
    positions: ast.Expr = ast.Call(e.span, ast.Name(e.span, "arange"), (n,), ())
    if (start, step) != (0, 1):
        positions = ast.BinOp(e.span, "add", ast.BinOp(e.span, "mul", positions, ast.Num(
            e.span, step)), ast.Num(e.span, start))
    ck.value(positions)
    kept = [a for a, o in enumerate(ops) if o[0] != "index"]
    return make_view(ck, positions, tuple(0 if a == axis else None for a in kept))


def _with(ops: tuple[Op, ...], axis: int, op: Op) -> tuple[Op, ...]:
    return (*ops[:axis], op, *ops[axis + 1:])
