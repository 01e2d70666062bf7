"""fusile's typed-program AST: frozen dataclasses, each carrying its source span."""

from __future__ import annotations

from dataclasses import dataclass, field

from fusile.dsl.errors import Span


@dataclass(frozen=True)
class Node:
    span: Span = field(compare=False, repr=False)


# ----------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Name(Node):
    id: str


@dataclass(frozen=True)
class Num(Node):
    value: int | float


@dataclass(frozen=True)
class Str(Node):
    value: str


@dataclass(frozen=True)
class Const(Node):
    """None, True or False."""

    value: bool | None


@dataclass(frozen=True)
class BinOp(Node):
    op: str  # add sub mul div floordiv mod matmul pow and_ or_ xor lshift rshift
    left: Expr
    right: Expr


@dataclass(frozen=True)
class UnaryOp(Node):
    op: str  # neg pos invert
    operand: Expr


@dataclass(frozen=True)
class Compare(Node):
    op: str  # < <= > >= == !=
    left: Expr
    right: Expr


@dataclass(frozen=True)
class IfExp(Node):
    """`body if cond else orelse`: cond must be a constant known when compiling."""

    cond: Expr
    body: Expr
    orelse: Expr


@dataclass(frozen=True)
class Keyword(Node):
    name: str
    value: Expr


@dataclass(frozen=True)
class Call(Node):
    func: Expr  # a Name, or an Attribute chain resolved through the function's globals
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]


@dataclass(frozen=True)
class Slice(Node):
    """`lower:upper:step` inside an index; each part may be missing (a bare `:` has none)."""

    lower: Expr | None = None
    upper: Expr | None = None
    step: Expr | None = None

    @property
    def is_full(self) -> bool:
        return self.lower is None and self.upper is None and self.step is None


@dataclass(frozen=True)
class EllipsisLit(Node):
    pass


@dataclass(frozen=True)
class Subscript(Node):
    value: Expr
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Attribute(Node):
    value: Expr
    attr: str


@dataclass(frozen=True)
class TupleExpr(Node):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class ListExpr(Node):
    """`[a, b]`: only the pieces of concat and stack."""

    items: tuple[Expr, ...]


Expr = (
    Name | Num | Str | Const | BinOp | UnaryOp | Compare | IfExp | Call | Slice | EllipsisLit
    | Subscript | Attribute | TupleExpr | ListExpr
)


# ----------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class Assign(Node):
    targets: tuple[str, ...]  # one name, or several for tuple unpacking
    target_spans: tuple[Span, ...]
    value: Expr


@dataclass(frozen=True)
class Return(Node):
    values: tuple[Expr, ...]


Stmt = Assign | Return


@dataclass(frozen=True)
class Param(Node):
    name: str
    annotation: Expr | None
    default: Expr | None


@dataclass(frozen=True)
class FuncDef(Node):
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    docstring: str | None = None


def dump(node: object, indent: int = 0) -> str:
    """A readable multi-line dump (FUSILE_DEBUG=ast)."""
    pad = "  " * indent
    if isinstance(node, tuple):
        return "\n".join(dump(item, indent) for item in node)
    if not isinstance(node, Node):
        return f"{pad}{node!r}"
    fields = {k: v for k, v in vars(node).items() if k not in ("span", "target_spans")}
    simple = {k: v for k, v in fields.items() if not isinstance(v, Node | tuple) or v == ()}
    nested = {k: v for k, v in fields.items() if k not in simple}
    head = f"{pad}{type(node).__name__}" + (
        "(" + ", ".join(f"{k}={v!r}" for k, v in simple.items()) + ")" if simple else ""
    )
    head += f"  @{node.span.line}:{node.span.col}"
    lines = [head]
    for k, v in nested.items():
        lines.append(f"{pad}  {k}:")
        lines.append(dump(v, indent + 2))
    return "\n".join(lines)
