"""A small FileCheck: `# CHECK:`, `# CHECK-NEXT:`, `# CHECK-NOT:` and `# CHECK-COUNT-N:` lines
(taken from a function's source) matched in order against text, as substrings."""

from __future__ import annotations

import inspect
import re


def checks_of(fn: object) -> list[tuple[str, str]]:
    src = inspect.getsource(getattr(fn, "__wrapped__", fn))
    return [(m.group(1), m.group(2).strip())
            for m in re.finditer(r"#\s*(CHECK(?:-NEXT|-NOT|-COUNT-\d+)?):(.*)", src)]


def _matcher(pat: str) -> re.Pattern[str]:
    """Literal text, with {{regex}} holes as in LLVM's FileCheck."""
    parts = re.split(r"\{\{(.*?)\}\}", pat)
    return re.compile("".join(re.escape(p) if i % 2 == 0 else p for i, p in enumerate(parts)))


def filecheck(text: str, checks: list[tuple[str, str]]) -> None:
    lines = text.splitlines()
    checks = [(k, _matcher(p)) for k, p in checks]  # type: ignore[misc]
    pos = 0  # next line to search from
    pending_not: list[str] = []
    for kind, pat in checks:
        if kind == "CHECK-NOT":
            pending_not.append(pat)
            continue
        if kind.startswith("CHECK-COUNT-"):
            want = int(kind.rsplit("-", 1)[1])
            got = sum(pat.search(line) is not None for line in lines[pos:])
            assert got == want, f"expected {want} lines with {pat!r} after line {pos}, got {got}"
            continue
        if kind == "CHECK-NEXT":
            line = lines[pos] if pos < len(lines) else ""
            assert pat.search(line), f"CHECK-NEXT {pat!r} not on line {pos + 1}: {line}"
            found = pos
        else:
            found = next((i for i in range(pos, len(lines)) if pat.search(lines[i])), -1)
            assert found >= 0, f"CHECK {pat!r} not found after line {pos}:\n{text}"
        for bad in pending_not:
            hit = [ln for ln in lines[pos:found] if bad.search(ln)]
            assert not hit, f"CHECK-NOT {bad!r} matched {hit[0]!r}"
        pending_not = []
        pos = found + 1
    for bad in pending_not:
        hit = [ln for ln in lines[pos:] if bad.search(ln)]
        assert not hit, f"CHECK-NOT {bad!r} matched {hit[0]!r}"


def function(src: str, name: str) -> str:
    """The text of one generated function, `def name(` up to the next top-level decorator or
    def (a module holds a kernel and its variants: name_split, name_combine, ...)."""
    m = re.search(rf"^def {re.escape(name)}\(", src, re.M)
    assert m is not None, f"no function {name} in:\n{src}"
    end = re.search(r"^(@|def )", src[m.end():], re.M)
    return src[m.start(): m.end() + end.start() if end else len(src)]


def between(text: str, start: str, end: str) -> str:
    """The text after the first `start` up to the next `end` (both must be there)."""
    assert start in text, f"{start!r} not in:\n{text}"
    rest = text.split(start, 1)[1]
    assert end in rest, f"{end!r} not after {start!r} in:\n{text}"
    return rest.split(end, 1)[0]


def branches(text: str, condition: str) -> tuple[str, str]:
    """The two bodies of the first `if <condition>` in generated Python `text`: the lines
    indented under it, and those under its `else:` (empty when it has none), each up to the
    first line back at the `if`'s own indentation."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith(f"if {condition}")),
                 None)
    assert start is not None, f"no `if {condition}` in:\n{text}"
    indent = len(lines[start]) - len(lines[start].lstrip())

    def body(first: int) -> tuple[list[str], int]:
        end = first
        while end < len(lines) and (not lines[end].strip() or
                                    len(lines[end]) - len(lines[end].lstrip()) > indent):
            end += 1
        return lines[first:end], end

    then, end = body(start + 1)
    other: list[str] = []
    if end < len(lines) and lines[end].strip().startswith("else:") and \
            len(lines[end]) - len(lines[end].lstrip()) == indent:
        other, _ = body(end + 1)
    return "\n".join(then), "\n".join(other)
