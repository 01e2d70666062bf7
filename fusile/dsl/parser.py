"""Source text -> AST, through the Lark grammar in grammar.lark.

`parse(source)` returns an `ast.FuncDef`; every failure is a FusileError quoting the user's line.
"""

from __future__ import annotations

import functools
import inspect
import keyword
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedInput, VisitError
from lark.indenter import DedentError, PythonIndenter

from fusile.dsl import ast
from fusile.dsl.errors import FusileError, FusileSyntaxError, Source, Span, UnsupportedSyntaxError
from fusile.dsl.parse_errors import bad_dedent, deep_recursion, syntax_error, too_deep

_GRAMMAR = Path(__file__).with_name("grammar.lark")


# The indenter (Lark's postlexer) keeps state while it parses: one parse at a time.
_PARSE_LOCK = threading.RLock()


@functools.cache
def _lark() -> Lark:
    return Lark(
        _GRAMMAR.read_text(),
        parser="lalr",
        postlex=PythonIndenter(),
        propagate_positions=True,
        maybe_placeholders=True,
    )


def _span(meta: Any) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _tok_span(tok: Token) -> Span:
    assert tok.line is not None and tok.column is not None
    end_line = tok.end_line if tok.end_line is not None else tok.line
    end_col = tok.end_column if tok.end_column is not None else tok.column + len(tok)
    return Span(tok.line, tok.column, end_line, end_col)


def _ident(tok: Token) -> str:
    """A name as Python allows it: not a keyword (Python rejects `def f(x, class)`)."""
    name = str(tok)
    if keyword.iskeyword(name):
        raise FusileSyntaxError(f"{name!r} is a Python keyword and cannot be used as a name",
                                _tok_span(tok))
    return name


def _unsupported(what: str, hint: str = "") -> Callable[..., Any]:
    def rule(self: Any, meta: Any, children: list[Any]) -> Any:
        raise UnsupportedSyntaxError(f"{what} is not supported in fusile{hint}", _span(meta))

    return rule


_BINOPS = ["add", "sub", "mul", "div", "floordiv", "mod", "matmul", "pow", "and_", "or_", "xor",
           "lshift", "rshift"]


@v_args(meta=True)
class _ToAst(Transformer[Token, Any]):
    # ------------------------------------------------------------------ program structure
    def start(self, meta: Any, children: list[Any]) -> ast.FuncDef:
        return children[-1]  # decorators are dropped: @fused is what brought us here

    def decorator(self, meta: Any, children: list[Any]) -> None:
        return None

    def funcdef(self, meta: Any, children: list[Any]) -> ast.FuncDef:
        name, params, _returns, body = children
        stmts = [s for s in body if s is not None]
        doc = None
        if stmts and isinstance(stmts[0], _Docstring):
            doc = stmts.pop(0).text
        for s in stmts:
            if isinstance(s, ast.FuncDef):
                raise UnsupportedSyntaxError(
                    "a nested function definition is not supported in fusile; define it at "
                    "module level with @fused and call it", s.span)
            if isinstance(s, _Docstring | _BareExpr):
                raise UnsupportedSyntaxError(
                    "a bare expression has no effect; assign it to a name or return it", s.span
                )
        seen: set[str] = set()
        for prm in params or ():
            if prm.name in seen:
                raise FusileSyntaxError(f"duplicate parameter {prm.name!r}", prm.span)
            seen.add(prm.name)
        return ast.FuncDef(_span(meta), _ident(name), tuple(params or ()), tuple(stmts), doc)

    def parameters(self, meta: Any, children: list[Any]) -> list[ast.Param]:
        return [c for c in children if c is not None]

    def param(self, meta: Any, children: list[Any]) -> ast.Param:
        name, annotation, default = children
        return ast.Param(_span(meta), _ident(name), annotation, default)

    star_param = _unsupported("a star parameter (*args, **kwargs, * or /)")

    def suite(self, meta: Any, children: list[Any]) -> list[Any]:
        out: list[Any] = []
        for c in children:
            out.extend(c if isinstance(c, list) else [c])
        return out

    def simple_stmt(self, meta: Any, children: list[Any]) -> list[Any]:
        return [c for c in children if c is not None]

    # ------------------------------------------------------------------ statements
    def expr_stmt(self, meta: Any, children: list[Any]) -> Any:
        *target_lists, value = children
        if not target_lists:
            if len(value) == 1 and isinstance(value[0], ast.Str):
                return _Docstring(_span(meta), value[0].value)
            return _BareExpr(_span(meta))
        if len(target_lists) > 1:
            raise UnsupportedSyntaxError("chained assignment (a = b = ...) is not supported",
                                         _span(meta))
        names, spans = _targets(target_lists[0])
        rhs = value[0] if len(value) == 1 else ast.TupleExpr(_span(meta), tuple(value))
        return ast.Assign(_span(meta), tuple(names), tuple(spans), rhs)

    def augassign(self, meta: Any, children: list[Any]) -> ast.Assign:
        target_list, op, value = children
        names, spans = _targets(target_list)
        if len(names) != 1:
            raise UnsupportedSyntaxError("augmented assignment needs a single name", _span(meta))
        binop = {"+=": "add", "-=": "sub", "*=": "mul", "/=": "div", "//=": "floordiv",
                 "**=": "pow", "@=": "matmul"}[str(op)]
        target = ast.Name(spans[0], names[0])
        return ast.Assign(_span(meta), (names[0],), (spans[0],),
                          ast.BinOp(_span(meta), binop, target, value))

    def return_stmt(self, meta: Any, children: list[Any]) -> ast.Return:
        values = children[0]
        if values is None:
            raise UnsupportedSyntaxError("return needs at least one value", _span(meta))
        if len(values) == 1 and isinstance(values[0], ast.TupleExpr):
            values = values[0].items  # return (a, b): the same as return a, b
        return ast.Return(_span(meta), tuple(values))

    def pass_stmt(self, meta: Any, children: list[Any]) -> None:
        return None

    if_stmt = _unsupported("an if statement", "; use where(cond, a, b) for a choice per element")
    for_stmt = _unsupported("a for loop", "; write the math on whole tensors")
    while_stmt = _unsupported("a while loop", "; write the math on whole tensors")
    with_stmt = _unsupported("a with statement")

    def test_list(self, meta: Any, children: list[Any]) -> list[Any]:
        return [c for c in children if c is not None]

    # ------------------------------------------------------------------ expressions
    def ternary(self, meta: Any, children: list[Any]) -> ast.IfExp:
        body, cond, orelse = children
        return ast.IfExp(_span(meta), cond, body, orelse)

    lambda_expr = _unsupported("a lambda")
    bool_or = _unsupported("'or'", "; use | on boolean tensors")
    bool_and = _unsupported("'and'", "; use & on boolean tensors")
    bool_not = _unsupported("'not'", "; use ~ on boolean tensors")
    star_arg = _unsupported("star-arguments (*args, **kwargs) in a call")

    def compare(self, meta: Any, children: list[Any]) -> ast.Expr:
        """`a < b < c` is `(a < b) & (b < c)`, elementwise, with b evaluated once (the same
        node twice: the checker and lowering memoise nodes)."""
        out: ast.Expr | None = None
        for i in range(1, len(children), 2):
            left, op, right = children[i - 1], children[i], children[i + 1]
            if str(op) == "<>":
                raise FusileSyntaxError("'<>' is not an operator; use '!='", _tok_span(op))
            one = ast.Compare(_span(meta), str(op), left, right)
            out = one if out is None else ast.BinOp(_span(meta), "and_", out, one)
        assert out is not None
        return out

    def neg(self, meta: Any, children: list[Any]) -> ast.UnaryOp:
        return ast.UnaryOp(_span(meta), "neg", children[0])

    def pos(self, meta: Any, children: list[Any]) -> ast.UnaryOp:
        return ast.UnaryOp(_span(meta), "pos", children[0])

    def invert(self, meta: Any, children: list[Any]) -> ast.UnaryOp:
        return ast.UnaryOp(_span(meta), "invert", children[0])

    def call(self, meta: Any, children: list[Any]) -> ast.Call:
        func, arguments = children
        args: list[ast.Expr] = []
        kwargs: list[ast.Keyword] = []
        for a in arguments or ():
            if isinstance(a, ast.Keyword):
                if any(k.name == a.name for k in kwargs):
                    raise FusileSyntaxError(f"keyword argument {a.name!r} repeated", a.span)
                kwargs.append(a)
            elif kwargs:
                raise FusileSyntaxError("positional argument follows keyword argument", a.span)
            else:
                args.append(a)
        return ast.Call(_span(meta), func, tuple(args), tuple(kwargs))

    def arguments(self, meta: Any, children: list[Any]) -> list[Any]:
        return [c for c in children if c is not None]

    def kwarg(self, meta: Any, children: list[Any]) -> ast.Keyword:
        return ast.Keyword(_span(meta), _ident(children[0]), children[1])

    def subscript(self, meta: Any, children: list[Any]) -> ast.Subscript:
        return ast.Subscript(_span(meta), children[0], tuple(children[1]))

    def subscripts(self, meta: Any, children: list[Any]) -> list[Any]:
        return [c for c in children if c is not None]

    def slice(self, meta: Any, children: list[Any]) -> ast.Slice:
        lower, upper, step = [*children, None, None, None][:3]
        return ast.Slice(_span(meta), lower, upper, step)

    def ellipsis(self, meta: Any, children: list[Any]) -> ast.EllipsisLit:
        return ast.EllipsisLit(_span(meta))

    def attribute(self, meta: Any, children: list[Any]) -> ast.Attribute:
        return ast.Attribute(_span(meta), children[0], str(children[1]))

    def name(self, meta: Any, children: list[Any]) -> ast.Name:
        return ast.Name(_span(meta), _ident(children[0]))

    def number(self, meta: Any, children: list[Any]) -> ast.Num:
        text = str(children[0]).replace("_", "")
        if text.endswith(("j", "J")):
            raise UnsupportedSyntaxError("complex numbers are not supported", _span(meta))
        if text.lower().startswith("0x"):
            return ast.Num(_span(meta), int(text, 16))
        is_float = any(ch in text for ch in ".eE")
        return ast.Num(_span(meta), float(text) if is_float else int(text))

    def string(self, meta: Any, children: list[Any]) -> ast.Str:
        text = str(children[0])
        body = text.lstrip("ubrfUBRF")
        quote = 3 if body[:3] in ('"""', "'''") else 1
        return ast.Str(_span(meta), body[quote:-quote])

    def none(self, meta: Any, children: list[Any]) -> ast.Const:
        return ast.Const(_span(meta), None)

    def true(self, meta: Any, children: list[Any]) -> ast.Const:
        return ast.Const(_span(meta), True)

    def false(self, meta: Any, children: list[Any]) -> ast.Const:
        return ast.Const(_span(meta), False)

    def tuple_lit(self, meta: Any, children: list[Any]) -> ast.TupleExpr:
        return ast.TupleExpr(_span(meta), tuple(c for c in children if c is not None))

    def list_lit(self, meta: Any, children: list[Any]) -> ast.ListExpr:
        return ast.ListExpr(_span(meta), tuple(c for c in children if c is not None))


def _binop_rule(op: str) -> Callable[..., ast.BinOp]:
    def rule(self: Any, meta: Any, children: list[Any]) -> ast.BinOp:
        return ast.BinOp(_span(meta), op, children[0], children[1])

    return rule


for _op in _BINOPS:
    setattr(_ToAst, _op, v_args(meta=True)(_binop_rule(_op)))


def _targets(exprs: list[ast.Expr]) -> tuple[list[str], list[Span]]:
    names: list[str] = []
    spans: list[Span] = []
    for e in exprs:
        if isinstance(e, ast.Name):
            names.append(e.id)
            spans.append(e.span)
        elif isinstance(e, ast.TupleExpr):
            inner_names, inner_spans = _targets(list(e.items))
            names += inner_names
            spans += inner_spans
        elif isinstance(e, ast.Subscript):
            raise UnsupportedSyntaxError(
                "assignment into a subscript (x[...] = ...) is not supported in fusile; "
                "tensors are immutable, use where()", e.span)
        elif isinstance(e, ast.Attribute):
            raise UnsupportedSyntaxError(
                "assignment to an attribute is not supported in fusile", e.span)
        else:
            raise FusileSyntaxError("cannot assign to this expression", e.span)
    return names, spans


class _Docstring:
    def __init__(self, span: Span, text: str):
        self.span, self.text = span, text


class _BareExpr:
    def __init__(self, span: Span):
        self.span = span


def parse(source: Source) -> ast.FuncDef:
    """Parse one function definition. Raises FusileError (with the user's line) on failure.
    Safe to call from several threads (one parse at a time)."""
    text = source.text if source.text.endswith("\n") else source.text + "\n"
    try:
        with _PARSE_LOCK, deep_recursion():
            tree = _lark().parse(text)
            result = _ToAst().transform(tree)
    except UnexpectedInput as err:
        with _PARSE_LOCK:  # match_examples parses again
            raise _with_source(syntax_error(err, text, _lark().parse), source) from None
    except DedentError:
        raise _with_source(bad_dedent(text), source) from None
    except VisitError as err:
        inner = err.orig_exc
        if isinstance(inner, FusileError):
            raise _with_source(inner, source) from None
        if isinstance(inner, RecursionError):
            raise _with_source(too_deep(), source) from None
        raise
    except RecursionError:
        raise _with_source(too_deep(), source) from None
    if not isinstance(result, ast.FuncDef):
        raise FusileSyntaxError("a fusile program is one function definition")
    return result


def _with_source(err: FusileError, source: Source) -> FusileError:
    span, err.span = err.span, None
    return err.located(span, source)


def source_of(fn: Callable[..., Any]) -> Source:
    """The Source of a Python function, dedented, with offsets back into its file."""
    try:
        lines, first = inspect.getsourcelines(fn)
        filename = inspect.getsourcefile(fn) or "<unknown>"
    except (OSError, TypeError) as exc:
        raise FusileError(
            f"cannot read the source of {getattr(fn, '__name__', fn)!r} ({exc}); "
            "define it in a file, or use fusile.from_source(text)"
        ) from None
    raw = "".join(lines)
    text = textwrap.dedent(raw)
    indent = len(lines[0]) - len(lines[0].lstrip()) if text != raw else 0
    return Source(filename, text, line_offset=first - 1, col_offset=indent, in_file=True)
