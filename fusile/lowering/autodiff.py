"""Reverse-mode differentiation of a traced program, and what the forward saves for it.

`differentiate(traced, wrt, given, save)` sweeps the graph from its results back to the
parameters in `wrt`, applying the rule table (derivatives.py), and returns two graphs: the
forward with the values it keeps for the backward added to its results, and the backward,
whose parameters are the forward's, the kept values, then one gradient per result in `given`.
to_source prints both as ordinary fusile programs, which the same pipeline compiles and fuses.

What is kept and what is recomputed (the rule, `save=`):
  - "reductions" (the default): a reduction's result (sum, mean, max, min, var, logsumexp,
    and the log-sum-exp under a softmax) is kept, in float32 for 16-bit inputs. It is small (a
    value per row) and costs a pass over the row to redo.
  - "matmuls": a matmul's result is kept (in its own dtype) instead of recomputed.
  - everything else (elementwise math, casts, views, positions) is recomputed from the
    inputs in the backward, where it fuses into the kernels that need it: no HBM traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusile.dsl.builtins import FLOAT_RESULT
from fusile.dsl.errors import DerivativeError
from fusile.dsl.types import (
    DType,
    ScalarType,
    TensorType,
    ValueType,
    bool_,
    f32,
    i64,
    result_dtype,
)
from fusile.lowering.derivatives import derivative
from fusile.lowering.trace import Node, Traced

REDUCTIONS = frozenset({"sum", "mean", "max", "min", "var", "logsumexp"})
SAVE_KINDS = {"reductions": REDUCTIONS, "matmuls": frozenset({"matmul"})}


class Build:
    """Makes the nodes rules ask for, with their types (shapes broadcast in the program's
    shape environment). One per sweep; `at` follows the node whose rule is running."""

    def __init__(self, traced: Traced, at: Node):
        self.env = traced.env
        self.at = at  # the node whose rule is running: new nodes carry its line
        self.lses = traced.extra  # a softmax's log-sum-exp, by the softmax's node
        # nodes already made, by (op, arguments, attributes): the same product asked for by
        # two rules (x * x gives g * x twice) is one node, and one line of the backward
        self.made: dict[tuple, Node] = {}

    def _node(self, op: str, args: list[Node], t: ValueType, **attrs: object) -> Node:
        key = (op, tuple(a.id for a in args), repr(sorted(attrs.items())))
        hit = self.made.get(key)
        if hit is None:
            hit = self.made[key] = Node(op, tuple(args), t, dict(attrs), self.at.span,
                                        self.at.source)
        return hit

    def _broadcast(self, args: list[Node], dtype: DType) -> ValueType:
        shapes = [a.shape for a in args if a.is_tensor]
        weak = all(a.type.weak for a in args)
        if not shapes:
            return ScalarType(dtype, weak)
        return TensorType(dtype, self.env.broadcast(shapes, None), weak)

    def const(self, value: float) -> Node:
        return self._node("const", [], ScalarType(f32), value=value)

    def ew(self, op: str, *args: Node) -> Node:
        """An elementwise arithmetic op (add sub mul div pow neg)."""
        return self._node(op, list(args), self._broadcast(list(args),
                                                          result_dtype([a.type for a in args])))

    def cmp(self, op: str, a: Node, b: Node) -> Node:
        return self._node("cmp", [a, b], self._broadcast([a, b], bool_), cmp=op)

    def call(self, name: str, *args: Node) -> Node:
        """An elementwise builtin: math functions, where, matmul."""
        if name == "matmul":
            a, b = args
            batch = self.env.broadcast([a.shape[:-2], b.shape[:-2]], None)
            t = TensorType(result_dtype([a.type, b.type]), (*batch, a.shape[-2], b.shape[-1]))
            return self._node("matmul", list(args), t, options={}, axes=())
        vals = list(args[1:]) if name == "where" else list(args)
        d = result_dtype([a.type for a in vals])
        if name in FLOAT_RESULT and not d.is_float:
            d = f32
        return self._node(name, list(args), self._broadcast(list(args), d), options={},
                          axes=())

    def reduce(self, name: str, x: Node, axes: tuple[int, ...], keepdims: bool) -> Node:
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keepdims or
                      i not in axes)
        d = x.type.dtype if name == "sum" else result_dtype([x.type])
        return self._node(name, [x], TensorType(d, shape), options={"keepdims": keepdims},
                          axes=tuple(axes))

    def expand(self, g: Node, like: Node) -> Node:
        n = self._node("expand_as", [g, like], TensorType(g.type.dtype, like.shape),
                       options={}, axes=())
        n.shape_args = frozenset({1})
        return n

    def swap_last(self, x: Node) -> Node:
        r = len(x.shape)
        return self.permute(x, (*range(r - 2), r - 1, r - 2))

    def permute(self, x: Node, dims: tuple[int, ...]) -> Node:
        """x's axes in the order dims (result axis k is x's axis dims[k])."""
        return self._node("view", [x], TensorType(x.type.dtype, tuple(x.shape[d] for d in dims)),
                          dims=dims)

    def unreduce(self, g: Node, n: Node) -> Node:
        """A reduction's gradient (or result) with the reduced axes back, as axes of 1."""
        if n.attrs["options"].get("keepdims"):
            return g
        x = n.args[0]
        axes = n.attrs["axes"]
        dims: list[int | None] = []
        k = 0
        for i in range(len(x.shape)):
            if i in axes:
                dims.append(None)
            else:
                dims.append(k)
                k += 1
        shape = tuple(1 if d is None else g.shape[d] for d in dims)
        return self._node("view", [g], TensorType(g.type.dtype, shape), dims=tuple(dims))

    def count(self, n: Node) -> Node:
        """The number of elements a reduction folded into each of its results."""
        x = n.args[0]
        total: Node | None = None
        for a in n.attrs["axes"]:
            size = self._node("size", [x], ScalarType(i64, True), options={"axis": a},
                              axes=(a,))
            size.shape_args = frozenset({0})
            total = size if total is None else self.ew("mul", total, size)
        assert total is not None
        return total

    def lse(self, n: Node) -> Node:
        """log(sum(exp(x))) over a softmax's axes, keepdims: kept by the forward."""
        hit = self.lses.get(n.id)
        if hit is None:
            x = n.args[0]
            hit = self.lses[n.id] = self.reduce("logsumexp", x, n.attrs["axes"],
                                                keepdims=True)
        return hit


@dataclass
class Gradients:
    """The two programs of a derived backward (graphs; to_source prints them)."""

    saved: list[Node]  # what the backward reads from the forward
    backward: list[Node]  # one gradient per parameter of `wrt`, in the parameters' dtype
    grads_in: list[Node]  # the backward's gradient parameters, one per given result


def differentiate(traced: Traced, wrt: list[int], given: list[int],
                  save: frozenset[str] = frozenset({"reductions"})) -> Gradients:
    """wrt: positions in traced.params; given: positions of the results whose gradient the
    backward receives (the others are taken as zero)."""
    kinds = frozenset().union(*(SAVE_KINDS[s] for s in save))
    adj: dict[int, list[Node]] = {}
    grads_in = []
    for k in given:
        r = traced.results[k]
        if not r.is_float:
            raise DerivativeError("a gradient was given for an integer or boolean result",
                                  r.span, r.source)
        g = Node("param", (), r.type, {"name": f"grad{k}"}, r.span, r.source)
        grads_in.append(g)
        adj.setdefault(r.id, []).append(g)
    order = _topo(traced.results)
    b = Build(traced, order[-1])
    for n in reversed(order):
        if n.op in ("param", "const") or not n.is_float:
            continue
        contribs = adj.pop(n.id, None)
        if not contribs:
            continue
        b.at = n
        g = _sum_all(b, contribs, n)
        for arg, ga in zip(n.args, derivative(b, n, g), strict=True):
            if ga is None or not arg.is_float or arg.op == "const":
                continue
            adj.setdefault(arg.id, []).append(_unbroadcast(b, ga, arg))
    outs = []
    for i in wrt:
        p = b.at = traced.params[i]
        contribs = adj.get(p.id)
        g = _sum_all(b, contribs, p) if contribs else b.expand(b.const(0.0), p)
        cast = b._node("astype", [g], TensorType(p.type.dtype, p.shape),
                       options={"dtype": p.type.dtype}, axes=())
        outs.append(cast)
    savable = {n.id for n in order if n.op in kinds}
    if "logsumexp" in kinds:
        savable |= {n.id for n in traced.extra.values()}
    return Gradients(_choose_saved(outs, savable), outs, grads_in)


def _topo(roots: list[Node]) -> list[Node]:
    order: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(r, False) for r in reversed(roots)]
    while stack:
        n, done = stack.pop()
        if done:
            order.append(n)
            continue
        if n.id in seen:
            continue
        seen.add(n.id)
        stack.append((n, True))
        stack.extend((a, False) for a in reversed(n.args) if a.id not in seen)
    return order


def _sum_all(b: Build, contribs: list[Node], like: Node) -> Node:
    g = contribs[0]
    for c in contribs[1:]:
        g = b.ew("add", g, c)
    env = b.env
    if like.is_tensor and (not g.is_tensor or len(g.shape) != len(like.shape) or any(
            env.find(a) != env.find(c) for a, c in zip(g.shape, like.shape, strict=True))):
        g = b.expand(g, like)
    return g


def _unbroadcast(b: Build, g: Node, like: Node) -> Node:
    """g summed over the axes `like` was broadcast along (leading ones, and its axes of 1)."""
    if not g.is_tensor:
        return g
    lead = len(g.shape) - len(like.shape)
    if lead > 0:
        g = b.reduce("sum", g, tuple(range(lead)), keepdims=False)
    env = b.env
    ones = tuple(i for i, (d, e) in enumerate(zip(like.shape, g.shape, strict=True))
                 if env.find(d) == 1 and env.find(e) != 1)
    if ones:
        g = b.reduce("sum", g, ones, keepdims=True)
    return g


def _choose_saved(outs: list[Node], savable: set[int]) -> list[Node]:
    """The forward values the backward reads that the rule keeps: the first such node on
    each path from the backward's results (what lies above it is then not recomputed)."""
    saved: list[Node] = []
    seen: set[int] = set()
    stack = list(reversed(outs))
    while stack:
        n = stack.pop()
        if n.id in seen:
            continue
        seen.add(n.id)
        if n.id in savable:
            saved.append(n)
            continue
        stack.extend(a for i, a in enumerate(n.args) if i not in n.shape_args)
    return saved
