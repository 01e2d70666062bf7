"""The messages of a failed parse: Lark's exceptions, which carry no or poor positions, made
into located FusileSyntaxErrors; and the recursion room the front end needs for deeply nested
expressions."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput

from fusile.dsl.errors import FusileError, FusileSyntaxError, InternalError, Span

# A 1,000-term sum nests 1,000 deep in the tree each stage walks recursively
_DEPTH = 20_000


# Parse failures that deserve a named message (Lark's match_examples picks the closest).
_EXAMPLES: dict[str, list[str]] = {
    "missing ':' at the end of the def line": ["def f(x)\n    return x\n"],
    "unbalanced brackets": ["def f(x):\n    return (x + 1\n", "def f(x):\n    return x[0\n"],
    "missing operand": ["def f(x):\n    return x +\n", "def f(x):\n    return * x\n"],
    "the body of a function must be indented": ["def f(x):\nreturn x\n"],
    "a fusile program is one function definition": ["x = 1\n", "import torch\n"],
}


def syntax_error(err: UnexpectedInput, text: str, reparse: Callable[[str], Any]
                 ) -> FusileSyntaxError:
    """The named, located error for a parse failure; `reparse` is the parser (Lark's
    match_examples runs it over the examples to pick the closest)."""
    label = None
    try:
        label = err.match_examples(reparse, _EXAMPLES, use_accepts=True)
    except Exception:  # match_examples re-parses examples; never let it mask the real error
        label = None
    line = getattr(err, "line", None) or 1
    col = getattr(err, "column", None) or 1
    if isinstance(err, UnexpectedEOF) or line < 1:
        lines = text.rstrip("\n").split("\n")
        line, col = len(lines), len(lines[-1]) + 1
    if isinstance(err, UnexpectedCharacters):
        char = text.split("\n")[line - 1][col - 1]  # lines as Lark counts them
        what = f"unexpected character {char!r}"
    else:
        tok = getattr(err, "token", None)
        if tok is None or tok.type in ("$END", "_DEDENT"):
            what = "unexpected end of input"
        elif tok.type == "_NEWLINE":
            what = "unexpected end of line"
        elif tok.type == "_INDENT":
            what = "unexpected indent"
        else:
            what = f"unexpected {str(tok)!r}"
    message = f"invalid syntax: {what}" + (f" ({label})" if label else "")
    return FusileSyntaxError(message, Span(line, col, line, col + 1))


@contextlib.contextmanager
def deep_recursion() -> Iterator[None]:
    """Let the front end walk deeply nested expressions (a 1,000-term sum, 500 nested calls):
    raises Python's recursion limit for the duration, never lowers it."""
    saved = sys.getrecursionlimit()
    if saved < _DEPTH:
        sys.setrecursionlimit(_DEPTH)
    try:
        yield
    finally:
        if sys.getrecursionlimit() == _DEPTH:
            sys.setrecursionlimit(saved)


def too_deep() -> FusileSyntaxError:
    return FusileSyntaxError(
        "this function nests too deeply for fusile to compile; split long expressions with "
        "intermediate assignments", Span(1, 1, 1, 4))


def bad_dedent(text: str) -> FusileSyntaxError:
    """The first line whose indentation matches no enclosing block (Lark's DedentError has
    no position)."""
    levels = [0]
    for n, line in enumerate(text.split("\n"), 1):
        body = line.lstrip(" \t\f")
        if not body or body.startswith("#"):
            continue
        indent = len(line) - len(body)
        if indent > levels[-1]:
            levels.append(indent)
            continue
        while indent < levels[-1]:
            levels.pop()
        if indent != levels[-1]:
            return FusileSyntaxError("unindent does not match any outer indentation level",
                                     Span(n, 1, n, indent + 1))
    return FusileSyntaxError("inconsistent indentation", Span(1, 1, 1, 2))


def guard(thunk: Callable[[], Any]) -> Any:
    """Run a front-end step; internal errors become FusileErrors unless FUSILE_FRONTEND_DEBUG."""
    from fusile import config

    try:
        with deep_recursion():
            return thunk()
    except FusileError:
        raise
    except RecursionError:
        raise too_deep() from None
    except Exception as exc:
        if config.get("frontend_debug"):
            raise
        raise InternalError(f"{exc!r}", repro="set FUSILE_FRONTEND_DEBUG=1 for the full "
                            "traceback") from exc
