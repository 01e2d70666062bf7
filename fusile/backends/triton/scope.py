"""A scope of generated Triton code: its lines, the values computed in it (looked up through
enclosing scopes), and which of them are tiles and along which axes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Scope:
    parent: Scope | None
    indent: str
    lines: list[str] = field(default_factory=list)
    values: dict[object, str] = field(default_factory=dict)
    tiles: dict[str, frozenset[str]] = field(default_factory=dict)  # var -> tile axes
    taken: set[str] = field(default_factory=set)  # names made by fresh(), kept by the root

    @classmethod
    def function(cls) -> Scope:
        """The top scope of a kernel function's body."""
        return cls(None, "    ")

    @classmethod
    def scratch(cls) -> Scope:
        """A scope for resolving values whose lines are not kept."""
        return cls(None, "")

    def child(self, deeper: bool = False) -> Scope:
        """A scope inside this one, for a block's own values: at the same indentation (lines
        spliced in later), or `deeper`, one level in (a loop's or a branch's body)."""
        return Scope(self, self.indent + ("    " if deeper else ""))

    @contextlib.contextmanager
    def block(self, header: str) -> Iterator[Scope]:
        """`header` (a for, if or else line) and its body: a scope one level in, with values
        of its own, whose lines follow the header here when the block ends."""
        self.emit(header)
        inner = self.child(deeper=True)
        yield inner
        self.lines += inner.lines

    def fresh(self, base: str) -> str:
        """A variable name not yet made in this function: `base`, else `base_1`, `base_2`...
        (sibling scopes, such as a dot's two operand frames, count their lines apart)."""
        root = self
        while root.parent is not None:
            root = root.parent
        name, n = base, 0
        while name in root.taken:
            n += 1
            name = f"{base}_{n}"
        root.taken.add(name)
        return name

    def get(self, key: object) -> str | None:
        s: Scope | None = self
        while s is not None:
            if key in s.values:
                return s.values[key]
            s = s.parent
        return None

    def axes_of(self, var: str) -> frozenset[str] | None:
        """The tile axes of var, or None when var is a scalar (literal or argument)."""
        s: Scope | None = self
        while s is not None:
            if var in s.tiles:
                return s.tiles[var]
            s = s.parent
        return None

    def tile(self, var: str, axes: frozenset[str]) -> None:
        self.tiles[var] = axes

    def derived(self, var: str, args: list[str]) -> None:
        """var = op(args): a tile if any argument is one."""
        axes = [a for a in (self.axes_of(x) for x in args) if a is not None]
        if axes:
            self.tiles[var] = frozenset().union(*axes)

    def emit(self, line: str) -> None:
        self.lines.append(self.indent + line)
