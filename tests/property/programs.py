"""Hypothesis strategies for random, well-typed fusile programs, drawn as source text.

A drawn `Program` is readable Python: when a property fails, Hypothesis shrinks it and prints
the program, its input shapes and dtypes, which can be pasted into a file and run. Every value
carries a bound on its magnitude; ops are only chosen where the result stays finite (logs of
positive values, exponentials of bounded ones), so the float64 reference is finite by
construction and NaN/inf handling is left to its own deliberate tests.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from hypothesis import strategies as st

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DIMS = [1, 2, 3, 5, 7, 13, 31, 64, 127, 257, 1000, 1031]
MAX_NUMEL = 16384
BOUND_CAP = 1e3  # keeps f16 outputs (max 65504) and exp() arguments in range


@dataclass
class Value:
    name: str
    shape: tuple[int, ...]
    bound: float  # |value| <= bound
    reduced: int = 1  # longest chain of reduced elements behind it (for tolerances)
    sliceable: bool = True  # elementwise math of parameters only (what a slice may cut)
    joined: bool = False  # made from a concat (only sum, mean, max and min reduce it)


@dataclass
class Program:
    source: str
    shapes: list[tuple[int, ...]]
    dtypes: list[torch.dtype]
    bound: float
    reduced: int
    max_row_block: int
    lines: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        inputs = ", ".join(f"{str(d).replace('torch.', '')}{list(s)}"
                           for s, d in zip(self.shapes, self.dtypes, strict=True))
        block = f"  (FUSILE_MAX_ROW_BLOCK={self.max_row_block})" if self.max_row_block else ""
        return f"\n# inputs: {inputs}{block}\n{self.source}"

    def inputs(self, device: str = "cpu", seed: int = 0) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return [(torch.rand(s, generator=g, dtype=torch.float64) * 4 - 2).to(d).to(device)
                for s, d in zip(self.shapes, self.dtypes, strict=True)]


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    try:
        return tuple(np.broadcast_shapes(a, b))
    except ValueError:
        return None


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


@st.composite
def base_shapes(draw: st.DrawFn) -> tuple[int, ...]:
    rank = draw(st.integers(1, 3))
    dims: list[int] = []
    for _ in range(rank):
        room = MAX_NUMEL // max(1, _numel(tuple(dims)))
        dims.append(draw(st.sampled_from([d for d in DIMS if d <= room] or [1])))
    return tuple(dims)


@st.composite
def input_shape(draw: st.DrawFn, base: tuple[int, ...]) -> tuple[int, ...]:
    drop = draw(st.integers(0, len(base) - 1)) if draw(st.booleans()) else 0
    dims = list(base[drop:])
    for i in range(len(dims)):
        if draw(st.integers(0, 3)) == 0:
            dims[i] = 1
    return tuple(dims)


UNARY = ["exp", "log", "rsqrt", "sqrt", "tanh", "erf", "sigmoid", "abs", "neg", "square",
         "expm1", "log1p"]
BINARY = ["add", "sub", "mul", "div", "maximum", "minimum", "where"]
REDUCE = ["sum", "mean", "max", "min", "logsumexp", "softmax", "var"]


class _Builder:
    def __init__(self, draw: st.DrawFn):
        self.draw = draw
        self.values: list[Value] = []
        self.lines: list[str] = []

    def new(self, expr: str, shape: tuple[int, ...], bound: float, reduced: int,
            sliceable: bool | None = None) -> Value:
        names = set(re.findall(r"\b[tx]\d+\b", expr))
        if sliceable is None:  # elementwise: as sliceable as its operands
            sliceable = all(v.sliceable for v in self.values if v.name in names)
        joined = "concat(" in expr or "stack(" in expr or any(
            v.joined for v in self.values if v.name in names)  # (a reduction's result too)
        v = Value(f"t{len(self.lines)}", shape, bound, reduced, sliceable, joined)
        self.lines.append(f"    {v.name} = {expr}")
        self.values.append(v)
        return v

    def slice(self, a: Value) -> Value | None:
        """A basic slice or an integer index of one axis of size >= 2: a static range, a
        step, a symbolic half (size(x, axis) // 2), or an index that drops the axis."""
        axes = [i for i, n in enumerate(a.shape) if n >= 2]
        if not a.sliceable or not axes:
            return None
        axis = self.draw(st.sampled_from(axes))
        n = a.shape[axis]
        form = self.draw(st.sampled_from(["range", "step", "half", "index"]))
        shape = list(a.shape)
        if form == "range":
            lo = self.draw(st.integers(0, n - 1))
            hi = self.draw(st.integers(lo + 1, n))
            neg = self.draw(st.booleans())  # the same range from the end
            part = f"{lo - n}:{hi - n if hi < n else ''}" if neg else f"{lo}:{hi}"
            shape[axis] = hi - lo
        elif form == "step":
            start = self.draw(st.integers(0, 1))
            step = self.draw(st.sampled_from([2, 3]))
            part = f"{start or ''}::{step}"
            shape[axis] = len(range(start, n, step))
        elif form == "half":
            part = f"size({a.name}, {axis}) // 2:"
            shape[axis] = n - n // 2
        else:
            k = self.draw(st.integers(-n, n - 1))
            part = str(k)
            shape.pop(axis)
        index = ", ".join([":"] * axis + [part])
        return self.new(f"{a.name}[{index}]", tuple(shape), a.bound, a.reduced)

    def concat(self, a: Value) -> Value | None:
        """concat of a with a value of its shape but along one axis (often a itself, or a
        slice of it), or a stack of two values of one shape."""
        if not a.sliceable or not a.shape:
            return None
        rank = len(a.shape)
        if self.draw(st.booleans()):
            others = [v for v in self.values if v.sliceable and v.shape == a.shape]
            c = self.draw(st.sampled_from(others))
            axis = self.draw(st.integers(-rank - 1, rank))
            shape = list(a.shape)
            shape.insert(axis % (rank + 1), 2)
            expr = f"stack([{a.name}, {c.name}], axis={axis})"
        else:
            axis = self.draw(st.integers(-rank, rank - 1))
            others = [v for v in self.values if v.sliceable and len(v.shape) == rank and all(
                n == m for i, (n, m) in enumerate(zip(v.shape, a.shape, strict=True))
                if i != axis % rank)]
            c = self.draw(st.sampled_from(others))
            shape = list(a.shape)
            shape[axis] += c.shape[axis]
            expr = f"concat([{a.name}, {c.name}], axis={axis})"
        if _numel(tuple(shape)) > MAX_NUMEL:
            return None
        return self.new(expr, tuple(shape), max(a.bound, c.bound), max(a.reduced, c.reduced))

    def pick(self) -> Value:
        return self.draw(st.sampled_from(self.values))

    def unary(self, a: Value) -> Value | None:
        op = self.draw(st.sampled_from(UNARY))
        b = a.bound
        if op == "exp":
            if b > 8:
                return None
            return self.new(f"exp({a.name})", a.shape, math.exp(b), a.reduced)
        if op == "expm1":
            if b > 8:
                return None
            return self.new(f"expm1({a.name})", a.shape, math.exp(b), a.reduced)
        if op == "log1p":  # of a non-negative value
            return self.new(f"log1p(abs({a.name}))", a.shape, max(math.log1p(b), 0.7),
                            a.reduced)
        if op == "log":  # of a positive value
            return self.new(f"log(abs({a.name}) + 0.5)", a.shape, max(math.log(b + 0.5), 0.7),
                            a.reduced)
        if op == "rsqrt":
            return self.new(f"rsqrt({a.name} * {a.name} + 0.25)", a.shape, 2.0, a.reduced)
        if op == "sqrt":
            return self.new(f"sqrt(abs({a.name}))", a.shape, math.sqrt(b), a.reduced)
        if op in ("tanh", "erf", "sigmoid"):
            return self.new(f"{op}({a.name})", a.shape, 1.0, a.reduced)
        if op == "abs":
            return self.new(f"abs({a.name})", a.shape, b, a.reduced)
        if op == "neg":
            return self.new(f"-{a.name}", a.shape, b, a.reduced)
        if b * b > BOUND_CAP:
            return None
        return self.new(f"{a.name} ** 2", a.shape, b * b, a.reduced)

    def binary(self, a: Value, c: Value) -> Value | None:
        shape = _broadcast(a.shape, c.shape)
        if shape is None or _numel(shape) > MAX_NUMEL:
            return None
        if any(u.joined and not v.sliceable and not v.joined for u, v in ((a, c), (c, a))):
            return None  # a reduction's result cut at a concat's seams: refused, not yet done
        op = self.draw(st.sampled_from(BINARY))
        red = max(a.reduced, c.reduced)
        if op == "add":
            return self.new(f"{a.name} + {c.name}", shape, a.bound + c.bound, red)
        if op == "sub":
            return self.new(f"{a.name} - {c.name}", shape, a.bound + c.bound, red)
        if op == "mul":
            if a.bound * c.bound > BOUND_CAP:
                return None
            return self.new(f"{a.name} * {c.name}", shape, a.bound * c.bound, red)
        if op == "div":  # by something bounded away from 0
            return self.new(f"{a.name} / (abs({c.name}) + 1.0)", shape, a.bound, red)
        if op == "where":  # the threshold offset: two values that touch where they cross
            # (x and tanh(x) at 0) leave float32 and float64 picking different branches over
            # a band of inputs, and the gradients jump between them (found by the deep run)
            cmp = self.draw(st.sampled_from(["<", ">", "<=", ">="]))
            return self.new(f"where({a.name} {cmp} {c.name} + 0.125, {a.name}, {c.name} * 0.5)",
                            shape, max(a.bound, c.bound), red)
        return self.new(f"{op}({a.name}, {c.name})", shape, max(a.bound, c.bound), red)

    def rows_and_columns(self, a: Value) -> tuple[Value, Value] | None:
        """A norm's shape: each row scaled by a statistic of itself, and a sum of that over
        the first axis (a norm backward's dx and dw: a row kernel with column partials)."""
        if len(a.shape) < 2 or a.bound * a.bound > BOUND_CAP:
            return None
        n, m = a.shape[-1], a.shape[0]
        rows = self.new(f"{a.name} * rsqrt(mean({a.name} * {a.name}, axis=-1, keepdims=True) "
                        "+ 1.0)", a.shape, a.bound, a.reduced * n, False)
        if rows.bound * a.bound * m > BOUND_CAP:
            return None
        cols = self.new(f"sum({rows.name} * {a.name}, axis=0)", a.shape[1:],
                        rows.bound * a.bound * m, rows.reduced * m, False)
        return rows, cols

    def matmul(self, a: Value, c: Value) -> Value | None:
        """a @ c^T over both last axes, the leading ones broadcast as a batch: with a
        reduction after it over its last axis, a row-reduced contraction (dot-rows)."""
        if len(a.shape) < 2 or len(c.shape) < 2 or a.shape[-1] != c.shape[-1] or \
                a.joined or c.joined:  # a concat into a matmul is refused (not yet done)
            return None
        batch = _broadcast(a.shape[:-2], c.shape[:-2])
        k = a.shape[-1]
        if batch is None or a.bound * c.bound * k > BOUND_CAP:
            return None
        shape = (*batch, a.shape[-2], c.shape[-2])
        if _numel(shape) > MAX_NUMEL:
            return None
        prod = self.new(f"{a.name} @ {c.name}.mT", shape, a.bound * c.bound * k,
                        max(a.reduced, c.reduced) * k, False)
        if self.draw(st.booleans()):  # its rows reduced: a row-reduced contraction
            return self.reduce(prod, -1) or prod
        return prod

    def reduce(self, a: Value, axis: int | None = None) -> Value | None:
        if not a.shape:
            return None
        # a concat takes every reduction across the axes without a seam, and these across
        # any: the generator does not track where the seams are
        op = self.draw(st.sampled_from(REDUCE if not a.joined else ["sum", "mean", "max",
                                                                    "min"]))
        rank = len(a.shape)
        if axis is None:
            axis = self.draw(st.integers(-rank, rank - 1))
        n = a.shape[axis]
        keep = self.draw(st.booleans())
        shape = list(a.shape)
        if keep:
            shape[axis] = 1
        else:
            shape.pop(axis)
        red = a.reduced * n
        if op == "softmax":
            if a.bound > 40:
                return None
            return self.new(f"softmax({a.name}, axis={axis})", a.shape, 1.0, red, False)
        kd = f", keepdims={keep}"
        if op == "sum":
            if a.bound * n > BOUND_CAP:
                return None
            return self.new(f"sum({a.name}, axis={axis}{kd})", tuple(shape), a.bound * n, red,
                            False)
        if op == "logsumexp":
            return self.new(f"logsumexp({a.name}, axis={axis}{kd})", tuple(shape),
                            a.bound + math.log(n), red, False)
        if op == "var":
            return self.new(f"var({a.name}, axis={axis}{kd})", tuple(shape), a.bound * a.bound,
                            red, False) if a.bound * a.bound <= BOUND_CAP else None
        return self.new(f"{op}({a.name}, axis={axis}{kd})", tuple(shape), a.bound, red, False)


@st.composite
def programs(draw: st.DrawFn, max_ops: int = 6, slices: bool = False) -> Program:
    """A random program; `slices` also draws slices and integer indices of parameters and of
    the elementwise values made from them, and concats and stacks of those."""
    base = draw(base_shapes())
    n_in = draw(st.integers(1, 3))
    shapes = [draw(input_shape(base)) for _ in range(n_in)]
    dtype = draw(st.sampled_from(DTYPES))
    mixed = draw(st.integers(0, 4)) == 0
    dtypes = [draw(st.sampled_from(DTYPES)) if mixed else dtype for _ in range(n_in)]
    b = _Builder(draw)
    params = [f"x{i}" for i in range(n_in)]
    for p, s in zip(params, shapes, strict=True):
        b.values.append(Value(p, s, 2.0))
    pair: tuple[Value, Value] | None = None  # a row value and its column sum, returned both
    for _ in range(draw(st.integers(1, max_ops))):
        kinds = ["unary", "binary", "binary", "reduce", "rows_and_columns", "matmul"] + \
            ["slice", "slice", "concat"] * slices
        kind = draw(st.sampled_from(kinds))
        if kind == "rows_and_columns":
            pair = b.rows_and_columns(b.pick()) or pair
        elif kind == "slice":
            b.slice(b.pick())
        elif kind == "concat":
            b.concat(b.pick())
        elif kind == "unary":
            b.unary(b.pick())
        elif kind == "binary":
            b.binary(b.pick(), b.pick())
        elif kind == "matmul":
            b.matmul(b.pick(), b.pick())
        else:
            b.reduce(b.pick())
    if draw(st.integers(0, 4)) == 0:  # end on a row kernel with column partials
        pair = b.rows_and_columns(b.pick()) or pair
    made = [v for v in b.values if v.name not in params]
    if not made:
        made = [b.new(f"{params[0]} * 1.0", shapes[0], 2.0, 1)]
    outs = [made[-1]]
    if pair is not None and pair[1] is made[-1]:
        outs = [pair[1], pair[0]]
    elif len(made) > 1 and draw(st.booleans()):
        extra = draw(st.sampled_from(made[:-1]))
        outs.append(extra)
    lines = _live(b.lines, [v.name for v in outs])
    src = "\n".join([f"def prog({', '.join(params)}):", *lines,
                     f"    return {', '.join(v.name for v in outs)}", ""])
    block = draw(st.sampled_from([0, 0, 64, 256]))
    return Program(src, shapes, dtypes, max(v.bound for v in outs),
                   max(v.reduced for v in outs), block, lines)


def _live(lines: list[str], outputs: list[str]) -> list[str]:
    """Only the statements the outputs depend on, so a shrunk failure reads cleanly."""
    need = set(outputs)
    kept: list[str] = []
    for line in reversed(lines):
        name, expr = line.strip().split(" = ", 1)
        if name in need:
            kept.append(line)
            need |= set(re.findall(r"\bt\d+\b", expr))
    return kept[::-1]
