"""Type and shape inference: AST + argument types -> `Typed`, the checked program.

The checker resolves every name (parameter, local, builtin, global constant, another @fused
function, which is inlined), binds builtin arguments, folds constants, and records each
expression's type. Lowering reads `Typed` and never re-derives a type.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fusile.dsl import ast, calls, concat, spellings, views
from fusile.dsl.builtins import BUILTINS, CONSTANTS, OPTION, BoundCall, bind, signature
from fusile.dsl.errors import (
    AxisError,
    ConstantError,
    DTypeError,
    FusileError,
    RankError,
    ShapeMismatchError,
    Source,
    Span,
    UnknownNameError,
    UnsupportedSyntaxError,
)
from fusile.dsl.options import option
from fusile.dsl.resolve import resolve_global
from fusile.dsl.shadow import unshadow
from fusile.dsl.typed import Binding, MultiType, Typed
from fusile.dsl.types import (
    DType,
    ScalarType,
    ShapeEnv,
    Sym,
    TensorType,
    ValueType,
    bool_,
    f32,
    i64,
    result_dtype,
    show_shape,
)
from fusile.dsl.unpack import unpack_splits

_ARITH = {"add", "sub", "mul", "div", "floordiv", "mod", "pow"}
_BITWISE = {"and_", "or_", "xor"}
_PY_BINOP = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "floordiv": lambda a, b: a // b,
    "mod": lambda a, b: a % b, "pow": lambda a, b: a**b,
    "and_": lambda a, b: a & b, "or_": lambda a, b: a | b, "xor": lambda a, b: a ^ b,
}
_PY_CMP = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


def _scalar_of(value: Any) -> ScalarType:
    if isinstance(value, bool):
        return ScalarType(bool_)
    if isinstance(value, int):
        return ScalarType(i64)
    return ScalarType(f32)


class Checker:
    def __init__(self, typed: Typed, globals_: dict[str, Any], depth: int = 0):
        self.t = typed
        self.globals = globals_
        self.scope: dict[str, Binding] = {}
        self.defs: dict[str, ast.Expr | None] = {}  # each local's defining expression
        self.depth = depth

    # ------------------------------------------------------------------ statements
    def run(self, params: list[Binding]) -> Typed:
        try:
            return self._run(params)
        except FusileError as err:
            raise err.located(self.t.func.span, self.t.source) from None

    def _run(self, params: list[Binding]) -> Typed:
        # the tree as Python scopes it (`var = x.var(-1)`: a local, renamed away from the
        # builtin) with torch's splits unpacked into slices (`a, b = x.chunk(2, dim=-1)`)
        func = self.t.func = unpack_splits(unshadow(self.t.func, BUILTINS))
        for p, b in zip(func.params, params, strict=True):
            self.scope[p.name] = b
        self.t.param_types = [b.type for b in params]  # type: ignore[misc]
        self.t.param_is_const = [b.is_const for b in params]
        returned = False
        for stmt in func.body:
            if returned:
                raise UnsupportedSyntaxError("code after return is never run", stmt.span)
            if isinstance(stmt, ast.Assign):
                self.assign(stmt)
            else:
                self.ret(stmt)
                returned = True
        if not returned:
            raise UnsupportedSyntaxError(
                f"{func.name}() has no return statement; a fused function returns its results",
                func.span)
        return self.t

    def assign(self, stmt: ast.Assign) -> None:
        value = stmt.value
        if isinstance(value, ast.TupleExpr):
            types: list[Binding] = [self.binding(v) for v in value.items]
        else:
            b = self.binding(value)
            types = [Binding(t) for t in b.type] if isinstance(b.type, tuple) else [b]
        if len(stmt.targets) != len(types):
            raise ShapeMismatchError(
                f"cannot unpack {len(types)} value(s) into {len(stmt.targets)} name(s)",
                stmt.span, self.t.source)
        for name, b in zip(stmt.targets, types, strict=True):
            self.scope[name] = b
            self.defs[name] = value.items[stmt.targets.index(name)] if isinstance(
                value, ast.TupleExpr) else value if len(stmt.targets) == 1 else None
            if self.t.concats and self.defs[name] is not None and concat.seams(
                    self, self.defs[name]):  # type: ignore[arg-type]
                self.t.unlowered.add(id(self.defs[name]))

    def ret(self, stmt: ast.Return) -> None:
        for v in stmt.values:
            t = self.expr(v)
            for one in t if isinstance(t, tuple) else (t,):
                if not isinstance(one, TensorType):
                    raise RankError(
                        "a fused function returns tensors; this is a scalar "
                        "(broadcast it against a tensor first)", v.span)
            concat.add_result(self, v, t)
            self.t.results.append(v)
        if not self.t.pieces:
            self.t.joins.clear()  # one to one

    # ------------------------------------------------------------------ expressions
    def binding(self, e: ast.Expr) -> Binding:
        t = self.expr(e)
        if id(e) in self.t.consts:
            return Binding(t, self.t.consts[id(e)], True)
        return Binding(t)

    def value(self, e: ast.Expr) -> ValueType:
        t = self.expr(e)
        if isinstance(t, tuple):
            raise ShapeMismatchError(
                f"this call returns {len(t)} values; unpack them first (a, b = ...)", e.span)
        return t

    def expr(self, e: ast.Expr) -> ValueType | MultiType:
        if id(e) in self.t.types:  # a node a rewrite uses twice (the b of a < b < c)
            return self.t.types[id(e)]
        try:
            t = self._expr(e)
        except FusileError as err:
            raise err.located(e.span, self.t.source) from None
        self.t.types[id(e)] = t
        return t

    def desugar(self, e: ast.Expr, core: ast.Expr) -> ValueType | MultiType:
        """Check `core` in place of `e`, a spelling of it (lowering reads core)."""
        self.t.desugared[id(e)] = core
        t = self.expr(core)
        if id(core) in self.t.consts:
            self.t.consts[id(e)] = self.t.consts[id(core)]
        return t

    def _const(self, e: ast.Expr, value: Any) -> ValueType:
        self.t.consts[id(e)] = value
        return _scalar_of(value)

    def _expr(self, e: ast.Expr) -> ValueType | MultiType:
        if isinstance(e, ast.Num):
            return self._const(e, e.value)
        if isinstance(e, ast.Const):
            if e.value is None:
                raise UnsupportedSyntaxError("None is only allowed in indexing (x[:, None])",
                                             e.span)
            return self._const(e, e.value)
        if isinstance(e, ast.Str):
            raise DTypeError("a string is not a value here", e.span)
        if isinstance(e, ast.Name):
            return self.name(e)
        if isinstance(e, ast.BinOp):
            return self.binop(e)
        if isinstance(e, ast.UnaryOp):
            return self.unary(e)
        if isinstance(e, ast.Compare):
            return self.compare(e)
        if isinstance(e, ast.IfExp):
            return self.if_exp(e)
        if isinstance(e, ast.Call):
            return calls.call(self, e)
        if isinstance(e, ast.Subscript):
            return views.subscript(self, e)
        if isinstance(e, ast.Attribute):
            return views.attribute(self, e)
        if isinstance(e, ast.TupleExpr):
            raise UnsupportedSyntaxError("a tuple is only allowed in return and assignment",
                                         e.span)
        if isinstance(e, ast.ListExpr):
            raise UnsupportedSyntaxError("a list is only allowed as the pieces of concat or "
                                         "stack: concat([a, b], axis=-1)", e.span)
        raise UnsupportedSyntaxError(f"{type(e).__name__} is not supported here", e.span)

    def name(self, e: ast.Name) -> ValueType | MultiType:
        b = self.scope.get(e.id)
        if b is not None:
            if e.id in self.defs:
                self.t.local_defs[id(e)] = self.defs[e.id]
            if b.is_const:
                self.t.consts[id(e)] = b.const
            return b.type
        if e.id in CONSTANTS:
            return self._const(e, CONSTANTS[e.id])
        if e.id in BUILTINS:
            raise UnsupportedSyntaxError(f"builtin {e.id!r} must be called: {signature(e.id)}",
                                         e.span)
        params = [p.name for p in self.t.func.params]
        if e.id in [n for s in self.t.func.body if isinstance(s, ast.Assign) for n in s.targets]:
            raise UnknownNameError(f"name {e.id!r} is used before it is assigned", e.span)
        found, obj = resolve_global(e.id, self.globals)
        if found and isinstance(obj, bool | int | float):
            return self._const(e, obj)
        if found:
            raise UnknownNameError(
                f"name {e.id!r} refers to a Python {type(obj).__name__}, which fusile cannot use "
                "as a value (numbers, tensors passed as arguments and @fused functions can be)",
                e.span)
        raise UnknownNameError(
            f"unknown name {e.id!r} (parameters: {', '.join(params) or 'none'})", e.span)

    def binop(self, e: ast.BinOp) -> ValueType:
        if e.op == "matmul":
            return self.builtin_call(e, "matmul", [e.left, e.right], {})
        lt, rt = self.value(e.left), self.value(e.right)
        if e.op in ("lshift", "rshift"):
            sym = {"lshift": "<<", "rshift": ">>"}[e.op]
            raise UnsupportedSyntaxError(f"operator {sym!r} is not supported in fusile", e.span)
        dtype = result_dtype([lt, rt])
        if e.op in _ARITH and dtype == bool_:
            raise DTypeError(f"arithmetic ({e.op}) on bool values; use & | ~, or astype first",
                             e.span)
        if e.op in _BITWISE and dtype.is_float:
            raise DTypeError(
                f"& | ^ need bool or integer operands, got {lt.dtype} and {rt.dtype}", e.span)
        if e.op == "div" or (e.op == "pow" and not dtype.is_float):
            dtype = dtype if dtype.is_float else f32
        if e.op in ("floordiv", "mod") and not dtype.is_float and \
                self.t.consts.get(id(e.right)) == 0:
            raise ConstantError("integer division by zero", e.span)
        out = self._broadcast([lt, rt], dtype, e.span)
        self._fold(e, [e.left, e.right], lambda a, b: _PY_BINOP[e.op](a, b))
        return out

    def unary(self, e: ast.UnaryOp) -> ValueType:
        t = self.value(e.operand)
        if e.op == "neg" and t.dtype == bool_:
            raise DTypeError("negation of a bool value; use ~", e.span)
        if e.op == "invert" and t.dtype.is_float:
            raise DTypeError(f"~ needs a bool or integer operand, got {t.dtype}", e.span)
        fn = {"neg": lambda a: -a, "pos": lambda a: a,
              "invert": lambda a: (not a) if isinstance(a, bool) else ~a}[e.op]
        self._fold(e, [e.operand], fn)
        return t

    def if_exp(self, e: ast.IfExp) -> ValueType | MultiType:
        """`a if c else b` chooses when compiling: c must be a constant (an int or bool
        parameter, a size known then); per element, where(c, a, b) is the spelling."""
        self.value(e.cond)
        if id(e.cond) not in self.t.consts:
            raise UnsupportedSyntaxError(
                "the condition of 'a if c else b' must be a constant known when compiling (an "
                "int or bool parameter); to choose per element write where(c, a, b)",
                e.cond.span)
        return self.desugar(e, e.body if self.t.consts[id(e.cond)] else e.orelse)

    def compare(self, e: ast.Compare) -> ValueType:
        lt, rt = self.value(e.left), self.value(e.right)
        self._fold(e, [e.left, e.right], _PY_CMP[e.op])
        return self._broadcast([lt, rt], bool_, e.span)

    def _fold(self, e: ast.Expr, operands: list[ast.Expr], fn: Any) -> None:
        if all(id(o) in self.t.consts for o in operands):
            # a float constant that fails in Python (1.0 / 0) is left to run time, where it
            # gives inf or nan as on the GPU
            with contextlib.suppress(ArithmeticError, ValueError):
                self.t.consts[id(e)] = fn(*(self.t.consts[id(o)] for o in operands))

    def _broadcast(self, types: list[ValueType], dtype: DType, span: Span) -> ValueType:
        shapes = [t.shape for t in types if isinstance(t, TensorType)]
        weak = all(t.weak for t in types)
        if not shapes:
            return ScalarType(dtype, weak)
        return TensorType(dtype, self.t.env.broadcast(shapes, span), weak and dtype != bool_)

    # ------------------------------------------------------------------ calls
    def builtin_call(self, e: ast.Expr, name: str, args: list[ast.Expr],
                     kwargs: dict[str, ast.Expr]) -> ValueType:
        b = BUILTINS[name]
        kwargs = spellings.kwargs_alias(kwargs, {p.name for p in b.params}, e.span)
        spans = {k: v.span for k, v in kwargs.items()}
        bound = bind(b, e.span, args, kwargs, spans)
        values: list[ast.Expr] = []
        options: dict[str, Any] = {}
        for p in b.params:
            arg = bound[p.name]
            is_expr = isinstance(arg, ast.Node)
            if p.kind == OPTION:
                options[p.name] = option(self, name, p.name, arg) if is_expr else arg
            else:
                values.append(arg)
        types = [self.value(v) for v in values]
        call = BoundCall(name, e.span, types, [v.span for v in values], options)
        out = b.infer(call, self.t.env)
        if self.t.concats and concat.reads_values(name):
            core = concat.reduce(self, e, call, values, args, kwargs)  # of each piece
            if core is not None:
                return self.desugar(e, core)  # type: ignore[return-value]
            concat.refuse(self, values, f"{name}()")
        if name == "size" and isinstance(types[0], TensorType):
            d = self.t.env.find(types[0].shape[call.axes[0]])
            if isinstance(d, int):  # a fixed size is a constant (slice bounds read it)
                self.t.consts[id(e)] = d
        if b.nonempty:  # max/min: no identity to return for an empty axis (torch raises)
            x = types[0]
            assert isinstance(x, TensorType)
            for axis in call.axes:
                d = self.t.env.find(x.shape[axis])
                if d == 0:
                    raise AxisError(f"{name}() over axis {axis}, which has size 0", e.span)
                if isinstance(d, Sym):
                    self.t.env.nonempty.append((d, e.span, self.t.source, name))
        self.t.builtins[id(e)] = call
        self.t.builtin_args[id(e)] = values
        return out


def check(func: ast.FuncDef, source: Source, globals_: dict[str, Any],
          params: list[Binding], env: ShapeEnv | None = None) -> Typed:
    """Check `func` for the given parameter bindings; raises FusileError on a bad program."""
    typed = Typed(func, source, env or ShapeEnv())
    return Checker(typed, globals_).run(params)


def describe(t: ValueType) -> str:
    if isinstance(t, TensorType):
        return f"{t.dtype}{show_shape(t.shape)}"
    return repr(t)


