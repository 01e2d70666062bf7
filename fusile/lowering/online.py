"""Recognise a log-sum-exp's sum, `l = sum_j exp(T - g)` with g = max_j T or guard(max_j T)
(softmax's shift, 0 for an infinite max), which a kernel can compute in the same pass over j
as the max: a running max and a sum rescaled by exp(r_old - r_new) whenever the shift
r = guard(max) moves (online softmax). Row kernels over long rows (codegen_loops.py) and
row-reduced contractions (dot_rows.py) use it, so the sum is not a second pass over the row.

After the MLIR passes the shift and the exp are fused into the sum's region (subf, exp, addf);
the guard is a generic of its own (others read it: a log-sum-exp adds it back).
"""

from __future__ import annotations

from dataclasses import dataclass

from fusile.lowering.attention import is_guard, single
from fusile.lowering.graph import Generic, Graph


@dataclass(frozen=True)
class Online:
    row_max: int  # generic mx = max_j T
    guard: int | None  # generic g = guard(mx), when the sum shifts by it
    row_sum: int  # generic l: region subf(T, g), exp, addf
    scores: int  # tensor T


def _gen(graph: Graph, gi: int | None) -> Generic | None:
    node = graph.nodes[gi] if gi is not None else None
    return node if isinstance(node, Generic) else None


def find(graph: Graph, gi: int, producer: dict[int, int]) -> Online | None:
    """The online sum at generic gi, its max and guard found through `producer` (tensor ->
    the generic computing it, as far as the caller's kernel goes), or None."""
    n = _gen(graph, gi)
    if n is None or len(n.inputs) != 2 or len(n.results) != 1 or len(n.body) != 3:
        return None
    t_t, g_t = n.inputs
    add = single(n, "arith.addf")
    acc = n.block_args[2]
    if add is None or acc not in add.operands or not add.dtype.is_float:
        return None
    by = n.defs
    ex = by.get(add.operands[1] if add.operands[0] == acc else add.operands[0])
    sub = by.get(ex.operands[0]) if ex is not None and ex.name == "math.exp" else None
    if sub is None or sub.name != "arith.subf" or sub.operands != n.block_args[:2]:
        return None
    g_gi = producer.get(g_t)
    src = _gen(graph, g_gi)
    if src is None:
        return None
    guard, mx = None, g_gi
    if not src.reduction_loops:
        if not is_guard(src, graph):
            return None
        guard, mx = g_gi, producer.get(src.inputs[0])
    mx_n = _gen(graph, mx)
    if mx is None or mx_n is None or mx_n.inputs != [t_t] or len(mx_n.body) != 1 or \
            single(mx_n, "arith.maximumf") is None:
        return None
    if n.maps[0] != mx_n.maps[0] or n.iterators != mx_n.iterators:
        return None  # not the max over the sum's axis of the same T
    return Online(mx, guard, gi, t_t)
