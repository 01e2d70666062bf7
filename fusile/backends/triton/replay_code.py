"""A recorded call's replay as straight-line Python: what Inductor's generated wrapper does
for its kernels. Replay.__call__ walks lists (allocations, argument templates, where each
call's values go) on every call; the code made here says the same launches once, as
statements: one allocation per result, the launch function called with the arguments
spelled out (constants as literals), the results returned. It calls exactly what the loop
calls, with the same arguments; tests/backends/test_replay.py compares the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fusile.backends.triton.launch import current_stream, hooks_active

_INPUT, _SLOT = 0, 1  # replay.py's fill kinds (the third, a scalar, reads env)


def straight_line(rp: Any, slow: Callable[[list[Any]], Any]) -> tuple[Callable, str] | None:
    """(function, its source) replaying `rp` (a Replay with direct launches), or None when it
    has none. `slow`: the general path, taken while a launch hook is installed."""
    if rp.direct is None:
        return None
    ns: dict[str, Any] = {"new": rp.new, "slow": slow, "scalars": rp.scalars,
                          "stream_of": current_stream, "hooks_active": hooks_active}
    lines = ["def replay(args):", "    if hooks_active():", "        return slow(args)"]
    if rp.scalars is not None:
        lines.append("    env = scalars(args)")
        for k, pos in rp.signs:
            lines.append(f"    if (env[{k}] > 0) != {pos!r}:")
            lines.append("        return None")
    for j, a in enumerate(rp.alloc):
        if a[0] is not None:
            ns[f"S{j}"], ns[f"T{j}"], ns[f"D{j}"] = a
            lines.append(f"    m{j} = new(S{j}, T{j}, D{j})")
        else:  # a view of an earlier allocation (a piece of a joined result)
            ns[f"I{j}"] = a[2]
            lines.append(f"    m{j} = m{a[1]}[I{j}]")
    lines.append(f"    s = stream_of({rp.device.index!r})")
    addressed = [(kind, x) for *_, fills, addresses in rp.direct if addresses
                 for _, kind, x in fills if kind in (_INPUT, _SLOT)]
    for kind, x in dict.fromkeys(addressed):  # each pointer's address, once
        if kind == _INPUT:  # an input may be an address already (a sliced parameter)
            lines.append(f"    p{x} = args[{x}]")
            lines.append(f"    if type(p{x}) is not int:")
            lines.append(f"        p{x} = p{x}.data_ptr()")
        else:
            lines.append(f"    q{x} = m{x}.data_ptr()")
    for r, (f, template, fills, addresses) in enumerate(rp.direct):
        ns[f"F{r}"] = f
        given = {i: (kind, x) for i, kind, x in fills}
        exprs = []
        for i, value in enumerate(template):
            if i == 3:
                exprs.append("s")
            elif i in given:
                kind, x = given[i]
                exprs.append(_value(kind, x, addresses))
            elif _literal(value):
                exprs.append(repr(value))
            else:
                ns[f"C{r}_{i}"] = value
                exprs.append(f"C{r}_{i}")
        lines.append(f"    F{r}({', '.join(exprs)})")
    for d, kind, x in rp.copies:  # pieces of joined results the kernels do not write
        lines.append(f"    m{d}.copy_({'args' if kind == _INPUT else 'm'}"
                     f"{f'[{x}]' if kind == _INPUT else x})")
    outs = [f"args[{x}].clone()" if kind == _INPUT else f"m{x}" for kind, x in rp.outs]
    lines.append(f"    return [{', '.join(outs)}]")
    source = "\n".join(lines) + "\n"
    exec(compile(source, "<fusile replay>", "exec"), ns)
    return ns["replay"], source


def _value(kind: int, x: int, addresses: bool) -> str:
    if kind == _INPUT:
        return f"p{x}" if addresses else f"args[{x}]"
    if kind == _SLOT:
        return f"q{x}" if addresses else f"m{x}"
    return f"env[{x}]"


def _literal(v: Any) -> bool:
    """Whether repr(v) is v again as a Python literal (a constant in the generated code)."""
    if v is None or type(v) in (int, bool, str):
        return True
    if type(v) is float:
        return math.isfinite(v)
    if type(v) is tuple:
        return all(_literal(u) for u in v)
    return False
