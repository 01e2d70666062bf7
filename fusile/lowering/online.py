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

from fusile.lowering.attention import guards, is_guard, single
from fusile.lowering.graph import Generic, Graph


@dataclass(frozen=True)
class Online:
    row_max: int  # generic mx = max_j T
    guard: int | None  # generic g = guard(mx), when the sum shifts by it
    row_sum: int  # generic l: region subf(T, g), exp, addf
    scores: int  # tensor T
    guarded: bool = True  # the shift is guard(max) (else the max itself: -inf - -inf is NaN)


def _gen(graph: Graph, gi: int | None) -> Generic | None:
    node = graph.nodes[gi] if gi is not None else None
    return node if isinstance(node, Generic) else None


def find(graph: Graph, gi: int, producer: dict[int, int]) -> Online | None:
    """The online sum at generic gi, its shift, max and guard found through `producer`
    (tensor -> the generic computing it, as far as the caller's kernel goes), or None. The
    shift T - g is in the sum's region, or a generic of its own whose result U other
    generics read too (softmax's exp(U) / l)."""
    n = _gen(graph, gi)
    if n is None or len(n.results) != 1 or len(n.inputs) not in (1, 2):
        return None
    add = single(n, "arith.addf")
    acc = n.block_args[len(n.inputs)]
    if add is None or acc not in add.operands or not add.dtype.is_float:
        return None
    by = n.defs
    ex = by.get(add.operands[1] if add.operands[0] == acc else add.operands[0])
    if ex is None or ex.name != "math.exp":
        return None
    if len(n.inputs) == 2:  # sum(exp(T - g)), the shift in the region
        inline = _shifts(graph, n, ex.operands[0], 2)
        t_t, g_t = n.inputs
    else:  # sum(exp(U)), U = T - g a generic of its own
        u = _gen(graph, producer.get(n.inputs[0]))
        if ex.operands != [n.block_args[0]] or len(n.body) != 2 or u is None or \
                u.reduction_loops or len(u.inputs) != 2 or u.maps[0] != u.maps[2] or \
                len(u.yields) != 1:
            return None
        inline = _shifts(graph, u, u.yields[0], 0)
        t_t, g_t = u.inputs
    if inline is None:
        return None
    g_gi = producer.get(g_t)  # g: the max, or a guard of it
    src = _gen(graph, g_gi)
    if src is None:
        return None
    guard, mx = None, g_gi
    if not src.reduction_loops:
        if not is_guard(src, graph):
            return None
        guard, mx = g_gi, producer.get(src.inputs[0])
    mx_n = _gen(graph, mx)
    top = single(mx_n, "arith.maximumf") if mx_n is not None else None
    if mx is None or mx_n is None or top is None or mx_n.inputs != [t_t] or \
            mx_n.block_args[1] not in top.operands:
        return None
    folded = top.operands[0] if top.operands[1] == mx_n.block_args[1] else top.operands[1]
    if not _reads(mx_n, folded) or len(mx_n.body) != 1 + (folded != mx_n.block_args[0]):
        return None
    if n.maps[0] != mx_n.maps[0] or n.iterators != mx_n.iterators:
        return None  # not the max over the sum's axis of the same T
    return Online(mx, guard, gi, t_t, guard is not None or inline)


def _shifts(graph: Graph, g: Generic, v: int, others: int) -> bool | None:
    """Whether region value v of generic g is `T - guard(s)` (softmax's shift fused into the
    region: True) or `T - s` (False), T its first block argument and s its second, with
    `others` ops besides in the region; None if it is neither."""
    sub = g.defs.get(v)
    if sub is None or sub.name != "arith.subf" or not _reads(g, sub.operands[0]):
        return None
    others += sub.operands[0] != g.block_args[0]  # T's cast to the compute type
    s, x = sub.operands[1], g.block_args[1]
    if s == x:
        return False if len(g.body) == 1 + others else None
    return True if guards(g, s, x, graph) and len(g.body) == 4 + others else None


def _reads(g: Generic, v: int) -> bool:
    """Region value v of generic g is its first block argument, or that widened (a 16-bit
    float's values in float32: the same numbers)."""
    op = g.defs.get(v)
    return v == g.block_args[0] or (op is not None and op.name == "arith.extf" and
                                    op.operands == [g.block_args[0]])
