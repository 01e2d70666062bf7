"""The checked program (`Typed`) and what a name is bound to while checking (`Binding`): the
checker's results, apart from the checker, so the modules it calls can make them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fusile.dsl import ast
from fusile.dsl.builtins import BoundCall
from fusile.dsl.errors import Source
from fusile.dsl.types import ShapeEnv, TensorType, ValueType

if TYPE_CHECKING:
    from fusile.dsl import concat

MultiType = tuple[ValueType, ...]


@dataclass
class Typed:
    """A checked function body: types, bindings and constants, keyed by id() of AST nodes."""

    func: ast.FuncDef
    source: Source
    env: ShapeEnv
    param_types: list[ValueType] = field(default_factory=list)
    param_is_const: list[bool] = field(default_factory=list)
    types: dict[int, ValueType | MultiType] = field(default_factory=dict)
    consts: dict[int, Any] = field(default_factory=dict)
    builtins: dict[int, BoundCall] = field(default_factory=dict)
    builtin_args: dict[int, list[ast.Expr]] = field(default_factory=dict)
    inlined: dict[int, tuple[Typed, list[ast.Expr | None]]] = field(default_factory=dict)
    views: dict[int, tuple[int | None, ...]] = field(default_factory=dict)
    # a spelling rewritten into the core form lowering knows (x.sum(dim=1) -> sum(x, axis=1))
    desugared: dict[int, ast.Expr] = field(default_factory=dict)
    # a Name node of a local -> the expression it was assigned (None: one of several values)
    local_defs: dict[int, ast.Expr | None] = field(default_factory=dict)
    # (parameter, per-axis slice ops) -> (name, type): views made at call time (push.py)
    derived: dict[tuple, tuple[str, TensorType]] = field(default_factory=dict)
    results: list[ast.Expr] = field(default_factory=list)
    result_types: list[TensorType] = field(default_factory=list)  # one per lowered result
    # concats (push.Concat, by id of their node) and the seams of values made from them
    concats: dict[int, Any] = field(default_factory=dict)
    seams: dict[int, dict[int, frozenset[int]]] = field(default_factory=dict)
    # a returned value with seams -> its pieces, each a lowered result; per caller-visible
    # result, its lowered position or the Join that assembles it ([]: one to one)
    pieces: dict[int, list[ast.Expr]] = field(default_factory=dict)
    joins: list[int | concat.Join] = field(default_factory=list)
    unlowered: set[int] = field(default_factory=set)  # assigned concats: only their pieces are

    def type_of(self, e: ast.Expr) -> ValueType:
        t = self.types[id(e)]
        assert not isinstance(t, tuple)
        return t


@dataclass(frozen=True)
class Binding:
    type: ValueType | MultiType
    const: Any = None  # a Python value when the name is a compile-time constant
    is_const: bool = False
