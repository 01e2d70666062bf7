"""Core-language expressions built at one source span: what the torch spellings
(spellings.py, and the formulas of norms.py, formulas.py, losses.py, unpack.py) rewrite a
call into, checked afterwards like the user's own code."""

from __future__ import annotations

from fusile.dsl import ast
from fusile.dsl.errors import Span


def call(span: Span, name: str, args: list[ast.Expr], kwargs: dict[str, ast.Expr]
         ) -> ast.Call:
    """`name(*args, **kwargs)`: a builtin's call."""
    return ast.Call(span, ast.Name(span, name), tuple(args),
                    tuple(ast.Keyword(v.span, k, v) for k, v in kwargs.items()))


class At:
    """Expressions at `span`: numbers, operators, comparisons and builtin calls."""

    def __init__(self, span: Span):
        self.span = span

    def num(self, v: float) -> ast.Num:
        return ast.Num(self.span, v)

    def op(self, o: str, a: ast.Expr, b: ast.Expr) -> ast.Expr:
        """A binary operator by its name: add, sub, mul, div, floordiv, pow, ..."""
        return ast.BinOp(self.span, o, a, b)

    def cmp(self, o: str, a: ast.Expr, b: ast.Expr) -> ast.Expr:
        """A comparison by its symbol: <, >, ==, !=, ..."""
        return ast.Compare(self.span, o, a, b)

    def neg(self, a: ast.Expr) -> ast.Expr:
        return ast.UnaryOp(self.span, "neg", a)

    def f(self, name: str, *args: ast.Expr, **kwargs: ast.Expr) -> ast.Call:
        return call(self.span, name, list(args), kwargs)
