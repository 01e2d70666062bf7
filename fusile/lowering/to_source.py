"""Expression graph -> fusile DSL source: how a derived program becomes an ordinary program.

Each operation is one assignment, in an order where every name is defined before use; a
parameter or a small constant is written in place. The text is what the user can read
(`fn.backward_source(...)`), and what the front end parses and checks like any other program.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fusile.dsl.errors import DerivativeError
from fusile.dsl.types import DType, ShapeEnv, Sym
from fusile.lowering.trace import Node

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%",
          "pow": "**", "and_": "&", "or_": "|", "xor": "^", "lshift": "<<", "rshift": ">>"}
_PREFIX = {"neg": "-", "invert": "~"}
_AXES = frozenset({"sum", "mean", "max", "min", "var", "logsumexp"})
_ONE_AXIS = frozenset({"softmax", "log_softmax"})


@dataclass
class Program:
    """A program to print: its name, parameters (nodes bound to names, in order) and results."""

    name: str
    params: list[tuple[str, Node]]
    results: list[Node]
    env: ShapeEnv


def to_source(p: Program) -> str:
    return _Printer(p).text()


class _Printer:
    def __init__(self, p: Program):
        self.p = p
        self.names: dict[int, str] = {n.id: name for name, n in p.params}
        self.taken = {name for name, _ in p.params}
        self.lines: list[str] = []
        self.count = 0

    def text(self) -> str:
        outs = [self.ref(r) for r in self.p.results]
        head = f"def {self.p.name}({', '.join(name for name, _ in self.p.params)}):"
        body = [f"    {line}" for line in self.lines]
        return "\n".join([head, *body, f"    return {', '.join(outs)}", ""])

    def fresh(self) -> str:
        while True:
            self.count += 1
            name = f"v{self.count}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def ref(self, n: Node) -> str:
        """n as an operand: a name, or a constant written in place."""
        if n.id in self.names:
            return self.names[n.id]
        if n.op == "const":
            return _literal(n.attrs["value"])
        if n.op == "param":
            raise AssertionError(f"parameter {n.attrs.get('name')} is not bound")
        stack = [(n, False)]  # define n's operands first, iteratively (graphs can be deep)
        while stack:
            m, ready = stack.pop()
            if m.id in self.names or m.op == "const":
                continue
            if ready:
                name = self.fresh()
                self.lines.append(f"{name} = {self.expr(m)}")
                self.names[m.id] = name
                continue
            stack.append((m, True))
            stack.extend((a, False) for a in reversed(self._operands(m)))
        return self.names[n.id]

    def _operands(self, n: Node) -> list[Node]:
        return [self.shape_ref(a) if i in n.shape_args else a for i, a in enumerate(n.args)]

    def shape_ref(self, n: Node) -> Node:
        """A node with n's shape that costs nothing to name: n itself if already defined,
        else a parameter of the same shape (a shape-only argument reads no values)."""
        if n.id in self.names or n.op == "const":
            return n
        env = self.p.env
        want = [env.find(d) for d in n.shape]
        for _, m in self.p.params:
            if m.is_tensor and [env.find(d) for d in m.shape] == want:
                return m
        return n

    def expr(self, n: Node) -> str:
        args = [self.ref(a) for a in self._operands(n)]
        op = n.op
        if op in _INFIX:
            return f"{args[0]} {_INFIX[op]} {args[1]}"
        if op in _PREFIX:
            return f"{_PREFIX[op]}{args[0]}"
        if op == "cmp":
            return f"{args[0]} {n.attrs['cmp']} {args[1]}"
        if op == "view":
            return _view(args[0], n.attrs["dims"], n)
        opts = n.attrs.get("options", {})
        axes = n.attrs.get("axes", ())
        if op in _AXES:
            extra = f", correction={opts['correction']}" if opts.get("correction") else ""
            return (f"{op}({args[0]}, axis={_axes(axes)}, "
                    f"keepdims={bool(opts.get('keepdims'))}{extra})")
        if op in _ONE_AXIS:
            return f"{op}({args[0]}, axis={_axes(axes)})"
        if op in ("index", "size"):
            return f"{op}({args[0]}, axis={axes[0]})"
        if op == "astype":
            d = opts["dtype"]
            return f"astype({args[0]}, {_literal(d.name if isinstance(d, DType) else d)})"
        if op == "arange":
            return f"arange({self.size_of(opts['n'], n)})"
        return f"{op}({', '.join(args)})"

    def size_of(self, d: object, n: Node) -> str:
        d = self.p.env.find(d)  # type: ignore[arg-type]
        if not isinstance(d, Sym):
            return str(d)
        for name, m in self.p.params:
            for axis, e in enumerate(m.shape):
                if self.p.env.find(e) == d:
                    return f"size({name}, axis={axis})"
        raise DerivativeError("arange() of a size no parameter has", n.span, n.source)


def _axes(axes: tuple[int, ...]) -> str:
    return str(axes[0]) if len(axes) == 1 else f"({', '.join(map(str, axes))})"


def _view(x: str, dims: tuple[int | None, ...], n: Node) -> str:
    src = [d for d in dims if d is not None]
    rank = len(src)
    if src != sorted(src):
        if src[-2:] == [rank - 1, rank - 2] and src[:-2] == list(range(rank - 2)):
            x = f"{x}.mT"
        else:
            x = f"{x}.permute({', '.join(map(str, src))})"
    if None not in dims:
        return x
    return f"{x}[{', '.join('None' if d is None else ':' for d in dims)}]"


def _literal(v: object) -> str:
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "(-inf)"
    text = repr(v)
    return f"({text})" if text.startswith("-") else text
