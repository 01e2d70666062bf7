"""User-facing errors. Each problem has its own class; the base class quotes the user's line.

A message looks like:

    fusile.dsl.errors.ShapeMismatchError: cannot broadcast shapes (M, 64) and (32,)
      --> model.py:12:9
       |
    12 |     y = x + w
       |         ^^^^^
"""

from __future__ import annotations

import linecache
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A source range: 1-based lines, 1-based columns, end column exclusive."""

    line: int
    col: int
    end_line: int
    end_col: int


@dataclass(frozen=True)
class Source:
    """Where a program's text came from, so spans can be mapped back to the user's file."""

    filename: str
    text: str  # the (dedented) text fusile parsed
    line_offset: int = 0  # added to a parsed line to get the file's line
    col_offset: int = 0  # added to a parsed column to get the file's column (dedent)
    in_file: bool = False  # read from `filename` (else the text is all there is)

    def file_line(self, line: int) -> str:
        """The user's line as it stands in the file (falls back to the parsed text)."""
        real = linecache.getline(self.filename, line + self.line_offset) if self.in_file \
            else ""
        if real:
            return real.rstrip("\n")
        lines = self.text.split("\n")  # as the parser counts lines (not at \f or \v)
        text = lines[line - 1] if 0 < line <= len(lines) else ""
        return " " * self.col_offset + text


class FusileError(Exception):
    """Base class of every error fusile reports to a user."""

    def __init__(self, message: str, span: Span | None = None, source: Source | None = None):
        self.message = message
        self.span = span
        self.source = source
        super().__init__(self._render())

    def located(self, span: Span | None, source: Source | None) -> FusileError:
        """Attach a location if the error has none yet (used when an inner check raised)."""
        if self.source is None and source is not None:
            self.source = source
            if self.span is None:
                self.span = span
            self.args = (self._render(),)
        return self

    def _render(self) -> str:
        if self.span is None or self.source is None:
            return self.message
        src, sp = self.source, self.span
        line_no = sp.line + src.line_offset
        col = sp.col + src.col_offset
        text = src.file_line(sp.line)
        width = (sp.end_col - sp.col) if sp.end_line == sp.line else len(text) - col + 1
        gutter = " " * len(str(line_no))
        return (
            f"{self.message}\n"
            f"{gutter}--> {src.filename}:{line_no}:{col}\n"
            f"{gutter} |\n"
            f"{line_no} | {text}\n"
            f"{gutter} | {' ' * (col - 1)}{'^' * max(1, width)}"
        )


class FusileSyntaxError(FusileError):
    """The text is not valid in fusile's language."""


class UnsupportedSyntaxError(FusileError):
    """Valid Python that fusile's language does not accept (loops, if, lambdas, ...)."""


class UnknownNameError(FusileError):
    """A name that is neither a parameter, a local, a builtin nor a usable global."""


class BuiltinCallError(FusileError):
    """A builtin called with the wrong arguments."""


class ShapeMismatchError(FusileError):
    """Shapes that do not broadcast, or a runtime size that breaks a compile-time assumption."""


class RankError(FusileError):
    """A tensor of the wrong rank for an operation."""


class AxisError(FusileError):
    """A reduction or index axis out of range, or not a constant."""


class DTypeError(FusileError):
    """An operation applied to a dtype it does not accept."""


class ConstantError(FusileError):
    """A constant the program cannot use: an integer division by zero, an integer that does
    not fit int64."""


class SignatureError(FusileError):
    """A call of an @fused function with arguments that do not fit its parameters."""


class LoweringError(FusileError):
    """A valid program that fusile cannot lower yet (a limitation, not a bug)."""


class BackendError(FusileError):
    """A backend could not run or compile a program."""


class DerivativeError(FusileError):
    """A program's backward cannot be derived: an op without a derivative rule, or a value
    (a concat, an integer input) that gradients cannot flow through."""


class InternalError(FusileError):
    """A bug in fusile, not in the user's program: the message says so, asks for a report and
    carries what reproduces it (`repro`: a saved MLIR file and the command that fails on it,
    or how to get the full traceback). Distinct from the user errors above; still a
    FusileError, so it quotes the user's line where one is known."""

    def __init__(self, message: str, span: Span | None = None, source: Source | None = None,
                 repro: str = ""):
        self.detail, self.repro = message, repro
        text = f"internal error in fusile: {message}"
        if repro:
            text += f"\n  {repro}"
        super().__init__(text + "\n  This is a bug in fusile, not in your program: please "
                         "report it with the lines above.", span, source)
