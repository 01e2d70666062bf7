"""Recognise a linalg contraction that a tensor-core dot can run: `acc += P * Q` over one
reduction loop k, where P (the left operand) never depends on the result's last loop n and Q
(the right operand) never depends on the result's second-to-last loop m.

P and Q may be any elementwise computation of the generic's inputs (the MLIR elementwise
fusion pass folds casts and scales of the operands into the contraction's region): that is
the prologue, computed on each loaded tile. Other parallel loops are batch loops.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusile.lowering.graph import Generic


@dataclass(frozen=True)
class DotForm:
    gi: int  # the contraction generic
    m: int  # loops of the generic
    n: int
    k: int
    batch: tuple[int, ...]
    lhs: int  # body value of the left operand P (depends on batch, m, k only)
    rhs: int  # body value of the right operand Q (depends on batch, k, n only)


def loop_deps(g: Generic) -> dict[int, frozenset[int]]:
    """For each value of g's region: the loops it depends on (through the inputs' maps and
    linalg.index). Values defined outside the region (scalars, constants) depend on none."""
    deps: dict[int, frozenset[int]] = {}
    for bid, m in zip(g.block_args, g.maps, strict=True):
        deps[bid] = frozenset(e for e in m if e is not None)
    for op in g.body:
        if op.name == "linalg.index":
            d = frozenset({op.attrs["dim"]})
        else:
            d = frozenset().union(*(deps.get(o, frozenset()) for o in op.operands))
        for r in op.results:
            deps[r] = d
    return deps


def dot_form(gi: int, g: Generic) -> DotForm | None:
    """The dot form of generic gi, or None if it is not `acc + P * Q` over one loop."""
    if len(g.reduction_loops) != 1 or len(g.results) != 1 or len(g.inputs) < 2:
        return None
    (k,) = g.reduction_loops
    out_map = g.maps[len(g.inputs)]
    if len(out_map) < 2 or out_map[-1] is None or out_map[-2] is None:
        return None
    m, n = out_map[-2], out_map[-1]
    acc = g.block_args[len(g.inputs)]
    by = g.defs
    top = by.get(g.yields[0])
    if top is None or top.name != "arith.addf" or acc not in top.operands:
        return None
    prod = by.get(top.operands[1] if top.operands[0] == acc else top.operands[0])
    if prod is None or prod.name != "arith.mulf":
        return None
    if sum(acc in op.operands for op in g.body) != 1:  # acc used only by the final add
        return None
    deps = loop_deps(g)
    p, q = prod.operands
    if n in deps.get(p, frozenset()) or m in deps.get(q, frozenset()):
        p, q = q, p
    dp, dq = deps.get(p, frozenset()), deps.get(q, frozenset())
    if n in dp or m in dq or k not in dp | dq:
        return None
    parallel = [i for i, it in enumerate(g.iterators) if it == "parallel"]
    batch = tuple(i for i in parallel if i not in (m, n))
    return DotForm(gi, m, n, k, batch, p, q)
