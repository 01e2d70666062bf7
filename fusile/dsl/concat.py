"""concat and stack: `concat([a, b], axis=-1)`, `torch.cat((a, b), dim=-1)`, `stack([a, b])`.

A concat is never built in memory. Its consumers are pushed into its pieces instead, as a
slice is pushed down to parameters (push.py): `concat([a, b]) * w` is
`concat([a * w[:n], b * w[n:]])`, and a slice of a concat picks the pieces it covers. What
reaches a result is split at the concat's seams: the lowered function returns one tensor per
piece, and the caller's result is one allocation whose pieces the kernels write in place
(`Join`: fusile/compiler.py assembles it, the runtime hands each kernel a view of it). So
`x * cos + concat([-x2, x1], axis=-1) * sin` is one kernel that reads x once and writes one
tensor.

A concat feeds elementwise math, slices, views, results and reductions: a reduction over
axes without a seam is the concat of the pieces' reductions, and sum, mean, max and min over
the seam combine the pieces' (softmax, var or logsumexp across a seam, a matmul or a concat
passed to another @fused function are located errors for now). The sizes of the pieces
along the axis are compiled in (the signature is specialised on them, as for a slice), so
the seams are known when compiling.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fusile.dsl import ast
from fusile.dsl.builtins import SHAPE_ONLY
from fusile.dsl.errors import AxisError, BuiltinCallError, UnsupportedSyntaxError
from fusile.dsl.push import ELEMENTWISE, KEEP, Op, make_concat, make_view, push
from fusile.dsl.types import TensorType

if TYPE_CHECKING:
    from fusile.dsl.builtins import BoundCall
    from fusile.dsl.check import Checker

NAMES = ("concat", "cat", "stack")


@dataclass(frozen=True)
class Join:
    """A result made of pieces: (lowered result position, torch index into the result)."""

    type: TensorType
    parts: tuple[tuple[int, tuple[slice, ...]], ...]


def call(ck: Checker, e: ast.Call, name: str) -> Any:
    """Check `concat(pieces, axis=0)` / `cat` / `stack(pieces, axis=0)` (dim= too)."""
    kwargs = {k.name: k.value for k in e.kwargs}
    args = list(e.args)
    if "tensors" in kwargs:
        args.insert(0, kwargs.pop("tensors"))
    for alias in ("dim", "axis"):
        if alias in kwargs:
            if len(args) > 1 or len(kwargs) > 1:
                raise BuiltinCallError(f"{name}() got the axis twice", kwargs[alias].span)
            args.append(kwargs.pop(alias))
    if kwargs or len(args) not in (1, 2):
        raise BuiltinCallError(f"{name}() takes ([a, b, ...], axis=0)", e.span)
    if not isinstance(args[0], ast.ListExpr | ast.TupleExpr) or not args[0].items:
        raise BuiltinCallError(f"{name}() takes its pieces as a list or tuple written in "
                               "place, e.g. [a, b]", args[0].span)
    pieces = list(args[0].items)
    types = [ck.value(p) for p in pieces]
    for p, t in zip(pieces, types, strict=True):
        if not isinstance(t, TensorType):
            raise BuiltinCallError(f"{name}() joins tensors; this is a scalar", p.span)
    first = types[0]
    assert isinstance(first, TensorType)
    rank = first.rank + (name == "stack")
    axis = const_axis(ck, args[1], rank, f"{name}()") if len(args) == 2 else 0
    if name == "stack":
        pieces = [make_view(ck, p, (*range(axis), None, *range(axis, rank - 1)))
                  for p in pieces]
    return ck.desugar(e, make_concat(ck, e, pieces, axis))


def const_axis(ck: Checker, e: ast.Expr, rank: int, what: str) -> int:
    """An axis argument of `what` (a call, as written): an integer constant in [-rank, rank),
    made non-negative."""
    ck.value(e)
    a = ck.t.consts.get(id(e))
    if not isinstance(a, int) or isinstance(a, bool) or not -rank <= a < rank:
        raise AxisError(f"{what}: the axis must be an integer constant in [{-rank}, "
                        f"{rank})", e.span)
    return a % rank


# ----------------------------------------------------------------------------- seams


def seams(ck: Checker, e: ast.Expr) -> dict[int, frozenset[int]]:
    """Per axis of e, where the concats e is computed from (through elementwise math and
    views) put a seam: the cuts that split e into pieces, each from one piece of each."""
    if not ck.t.concats:
        return {}
    memo = ck.t.seams
    if id(e) not in memo:
        memo[id(e)] = _seams(ck, e)
    return memo[id(e)]


def _seams(ck: Checker, e: ast.Expr) -> dict[int, frozenset[int]]:
    t = ck.t.types.get(id(e))
    if not isinstance(t, TensorType):
        return {}
    if id(e) in ck.t.desugared:
        return seams(ck, ck.t.desugared[id(e)])
    if isinstance(e, ast.Name):
        defined = ck.t.local_defs.get(id(e))
        return seams(ck, defined) if defined is not None else {}
    info = ck.t.concats.get(id(e))
    if info is not None:
        cuts: dict[int, set[int]] = {info.axis: set(info.offsets[1:-1])}
        for p, off in zip(info.pieces, info.offsets, strict=False):
            for a, cs in seams(ck, p).items():
                cuts.setdefault(a, set()).update(c + off if a == info.axis else c for c in cs)
        return {a: frozenset(c) for a, c in cuts.items()}
    if isinstance(e, ast.Subscript | ast.Attribute) and id(e) in ck.t.views:
        inner = seams(ck, e.value)
        return {k: inner[d] for k, d in enumerate(ck.t.views[id(e)]) if d in inner}
    out: dict[int, set[int]] = {}
    for o in operands(ck, e):
        ot = ck.t.types[id(o)]
        if not isinstance(ot, TensorType):
            continue
        shift = t.rank - ot.rank
        for a, cs in seams(ck, o).items():
            if ck.t.env.find(ot.shape[a]) != 1:  # a size-1 axis broadcasts: no seam
                out.setdefault(a + shift, set()).update(cs)
    return {a: frozenset(c) for a, c in out.items()}


def operands(ck: Checker, e: ast.Expr) -> list[ast.Expr]:
    """The operands of elementwise e (what a slice of e is pushed into), else []."""
    if (isinstance(e, ast.BinOp) and e.op != "matmul") or isinstance(e, ast.Compare):
        return [e.left, e.right]
    if isinstance(e, ast.UnaryOp):
        return [e.operand]
    call = ck.t.builtins.get(id(e))
    if call is not None and call.name in ELEMENTWISE:
        return list(ck.t.builtin_args[id(e)])
    return []


def reads_values(name: str) -> bool:
    """Whether builtin `name` reads its tensors' values other than elementwise (a concat's
    pieces then need `reduce`, or a refusal)."""
    return name not in ELEMENTWISE and name not in SHAPE_ONLY


_ROWWISE = {"sum", "mean", "max", "min", "var", "logsumexp", "softmax", "log_softmax"}
_COMBINE = {"sum": "add", "mean": "add", "max": "maximum", "min": "minimum"}


def reduce(ck: Checker, e: ast.Expr, call: BoundCall, values: list[ast.Expr],
           args: list[ast.Expr], kwargs: dict[str, ast.Expr]) -> ast.Expr | None:
    """A reduction (or softmax) of a value with seams, as the same call on each piece cut at
    the seams of one axis (the pieces' own calls, checked in turn, take any other axis's):
    concatenated where that axis is kept, combined where it is reduced (sum, mean, max,
    min). None where that does not apply (then `refuse` says so)."""
    cuts = seams(ck, values[0]) if call.name in _ROWWISE else {}
    if not cuts or (set(cuts) & set(call.axes) and call.name not in _COMBINE):
        return None
    axis = min(cuts)  # the pieces' calls take the other seams, as the checker checks them
    edges = cuts[axis]
    shaped = call.name in ("softmax", "log_softmax")  # the result has x's shape
    t = ck.value(values[0])
    assert isinstance(t, TensorType)
    size = ck.t.env.find(t.shape[axis])
    assert isinstance(size, int)
    bounds = [0, *sorted(edges), size]
    at = ast.Subscript(e.span, values[0], ())
    parts: list[ast.Expr] = []
    for lo, hi in itertools.pairwise(bounds):
        ops = tuple(("slice", lo, hi, 1) if a == axis else KEEP for a in range(t.rank))
        piece = push(ck, values[0], ops, at)
        rest = [piece if a is values[0] else a for a in args]
        part: ast.Expr = ast.Call(e.span, ast.Name(e.span, call.name), tuple(rest), tuple(
            ast.Keyword(v.span, k, piece if v is values[0] else v) for k, v in kwargs.items()))
        if call.name == "mean" and axis in call.axes:  # a piece's share of the count
            part = ast.BinOp(e.span, "mul", part, ast.Num(e.span, (hi - lo) / size))
        parts.append(part)
    if axis not in call.axes:
        keep = shaped or call.options.get("keepdims")
        return make_concat(ck, e, parts, axis if keep else axis - sum(
            a < axis for a in call.axes))
    out = parts[0]
    for p in parts[1:]:
        op = _COMBINE[call.name]
        out = ast.BinOp(e.span, op, out, p) if op == "add" else \
            ast.Call(e.span, ast.Name(e.span, op), (out, p), ())
    return out


def refuse(ck: Checker, values: list[ast.Expr], what: str) -> None:
    """A located error when one of these values, consumed by `what`, holds a concat."""
    for v in values:
        if seams(ck, v):
            raise BuiltinCallError(
                f"{what} cannot take a concat here yet: a concat feeds elementwise math, "
                "slices, views, results and reductions (sum, mean, max or min over any axis, "
                "the others over axes without a seam); apply it to the pieces and combine "
                "what it gives", v.span)


# ----------------------------------------------------------------------------- results


def add_result(ck: Checker, v: ast.Expr, t: Any) -> None:
    """Record a returned value (of type t, or types: several from one call): as lowered
    results, one per piece where it has seams (and a Join that assembles them)."""
    parts = split(ck, v, t) if isinstance(t, TensorType) else []
    if parts and ck.depth > 0:
        raise UnsupportedSyntaxError(
            "a @fused function that another one calls cannot return a concat yet; return its "
            "pieces, and concat them in the caller", v.span)
    types = ck.t.result_types
    if parts:
        ck.t.pieces[id(v)] = [p for p, _ in parts]
        ck.t.joins.append(Join(t, tuple((len(types) + k, index)
                                        for k, (_, index) in enumerate(parts))))
        for p, _ in parts:
            types.append(ck.t.type_of(p))  # type: ignore[arg-type]
        return
    for one in t if isinstance(t, tuple) else (t,):
        ck.t.joins.append(len(types))
        types.append(one)


def split(ck: Checker, v: ast.Expr, t: TensorType) -> list[tuple[ast.Expr, tuple[slice, ...]]]:
    """A result with seams as its pieces: (checked expression, where it goes in the result);
    [] when it has none."""
    cuts = seams(ck, v)
    if not cuts:
        return []
    at = ast.Subscript(v.span, v, ())
    ranges: list[list[Op]] = []
    for a in range(t.rank):
        edges = sorted(cuts.get(a, ()))
        if not edges:
            ranges.append([KEEP])
            continue
        d = ck.t.env.find(t.shape[a])
        assert isinstance(d, int)
        bounds = [0, *edges, d]
        ranges.append([("slice", lo, hi, 1) for lo, hi in itertools.pairwise(bounds)])
    out = []
    for ops in _product(ranges):
        piece = push(ck, v, tuple(ops), at)
        ck.value(piece)
        out.append((piece, tuple(slice(None) if o == KEEP else slice(o[1], o[2])
                                 for o in ops)))
    return out


def _product(ranges: list[list[Op]]) -> list[list[Op]]:
    out: list[list[Op]] = [[]]
    for r in ranges:
        out = [[*head, o] for head in out for o in r]
    return out
