"""Recognise attention's backward in a fused graph: contractions over query or key positions
of tiles that are recomputed from scores instead of read.

Written plainly in the DSL, the flash backward is

    s  = mods(q @ k^T)                  # score dots: (batch, i, j) tiles over a head dim
    p  = exp(s - lse)                   # the cone: elementwise functions of the score tiles,
    ds = p * (do @ v^T - delta) * scale #   row vectors, positions and scalars
    dq, dk, dv = ds @ k, ds^T @ q, p^T @ do   # out dots: reduce over j (dq) or i (dk, dv)

After the MLIR passes that is two dots in dot form producing (batch, i, j) tensors, elementwise
generics over them, and dots in dot form that read those tensors and reduce over i or over j.
Nothing else may read the score or cone tensors and none is a result: then no (.., S, S) tensor
needs to reach HBM. Each side becomes one kernel (lowering/partition.py): one program per block
of the side it keeps (keys for dk and dv, queries for dq) loops over blocks of the side it
reduces, recomputes the score tiles and the cone on chip, and accumulates its out dots
(backends/triton/codegen_grad.py).

The cone must compute an exponential (a probability tile): a plain chain of matmuls such as
`(a @ b) * 2 @ c` is two GEMMs, which the contraction kernel class runs better.

Masks of positions (`where(j <= i, x, -inf)`) bound the loop when every out dot's operand from
the cone is zero wherever the mask is false: -inf through additions and subtractions, exp of
that is 0, and products with 0 stay 0 (`masked_zero`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fusile.lowering.attention import index_masks
from fusile.lowering.contraction import DotForm, dot_form
from fusile.lowering.graph import Generic, Graph, producers

Mask = tuple[int, int]  # (generic, select op result)


@dataclass(frozen=True)
class GradForm:
    """One kernel's share of an attention backward: the out dots reducing over one side."""

    scores: tuple[DotForm, ...]  # (batch, i, j) tiles: m = i, n = j, k = a head dim
    cone: tuple[int, ...]  # elementwise generics over the score tiles, in program order
    outs: tuple[DotForm, ...]  # m = the kept side, k = the reduced side, n = a head dim
    loop_i: bool  # True: the outs reduce over query rows i (dk, dv); False: over keys j (dq)
    masks: tuple[Mask, ...]  # position masks outside which every out operand is zero

    @property
    def members(self) -> list[int]:
        return sorted({*(s.gi for s in self.scores), *self.cone, *(o.gi for o in self.outs)})


def _gens(graph: Graph) -> dict[int, Generic]:
    return {gi: n for gi, n in enumerate(graph.nodes) if isinstance(n, Generic)}


def find(graph: Graph, same: Callable[[tuple[int, int], tuple[int, int]], bool],
         skip: set[int]) -> list[GradForm]:
    """Attention backward kernels of graph, one per reduced side. `same(a, b)` says whether
    two (generic, loop) pairs have the same extent class; generics in skip are taken."""
    gens = _gens(graph)
    prod = producers(graph)
    scores: dict[int, DotForm] = {}  # score tensor -> its dot
    for gi, n in gens.items():
        if gi in skip:
            continue
        f = dot_form(gi, n)
        if f is not None and all(prod.get(t) is None or not gens[prod[t]].inputs
                                 for t in n.inputs):
            scores[n.results[0]] = f
    if not scores:
        return []
    cone: list[int] = []
    inner = set(scores)
    for gi, n in gens.items():  # program order: producers come first
        if gi not in skip and not n.reduction_loops and inner & set(n.inputs) and \
                len(n.results) == 1:
            cone.append(gi)
            inner.add(n.results[0])
    outs = []
    for gi, n in gens.items():
        if gi in skip or gi in cone or n.results[0] in scores or not inner & set(n.inputs):
            continue
        f = dot_form(gi, n)
        if f is None:
            return []  # something else reads a score tile: it has to be stored
        outs.append(f)
    if not outs or inner & set(graph.results) or not any(
            op.name in ("math.exp", "math.exp2") for gi in cone for op in gens[gi].body):
        return []
    s0 = next(iter(scores.values()))
    i_loop, j_loop = (s0.gi, s0.m), (s0.gi, s0.n)
    for s in scores.values():
        if not (same((s.gi, s.m), i_loop) and same((s.gi, s.n), j_loop)):
            return []
    tile = [(s0.gi, x) for x in (*s0.batch, s0.m, s0.n)]
    if any(not any(same((gi, x), t) for t in tile) for gi in cone
           for x in range(gens[gi].n_loops)):
        return []  # a cone generic with loops of its own (not a (batch, i, j) tile)
    sides: dict[bool, list[DotForm]] = {True: [], False: []}
    for f in outs:
        n = gens[f.gi]
        lhs_args = _inputs_of(n, f.lhs)
        rhs_args = _inputs_of(n, f.rhs)
        if any(t in inner for t in rhs_args) or not any(t in inner for t in lhs_args):
            return []  # the cone must be the left operand: (kept side, reduced side)
        if same((f.gi, f.k), i_loop) and same((f.gi, f.m), j_loop):
            sides[True].append(f)
        elif same((f.gi, f.k), j_loop) and same((f.gi, f.m), i_loop):
            sides[False].append(f)
        else:
            return []
    forms = []
    for loop_i, side in sides.items():
        if not side:
            continue
        need = _needed(gens, prod, [gens[f.gi] for f in side], set(cone), scores)
        zero = masked_zero(graph, gens, [c for c in cone if c in need], side)
        forms.append(GradForm(tuple(s for t, s in scores.items() if s.gi in need),
                              tuple(c for c in cone if c in need), tuple(side), loop_i, zero))
    return forms


def _inputs_of(n: Generic, v: int) -> set[int]:
    """Input tensors value v of generic n's region reads."""
    args = n.args_of(v)
    return {t for b, t in zip(n.block_args, n.inputs, strict=False) if b in args}


def _needed(gens: dict[int, Generic], prod: dict[int, int], outs: list[Generic],
            cone: set[int], scores: dict[int, DotForm]) -> set[int]:
    need: set[int] = set()
    stack = [t for n in outs for t in n.inputs]
    while stack:
        t = stack.pop()
        gi = prod.get(t)
        if gi is None or gi in need or (gi not in cone and t not in scores):
            continue
        need.add(gi)
        if gi in cone:
            stack.extend(gens[gi].inputs)
    return need


def masked_zero(graph: Graph, gens: dict[int, Generic], cone: list[int],
                outs: list[DotForm]) -> tuple[Mask, ...]:
    """Position masks of the cone outside which every out dot's cone operand is 0."""
    neg_t: dict[int, frozenset[Mask]] = {}  # tensor -> masks making it -inf
    zero_t: dict[int, frozenset[Mask]] = {}  # tensor -> masks making it 0
    empty: frozenset[Mask] = frozenset()

    def walk(gi: int) -> tuple[dict, dict]:
        n = gens[gi]
        masks = {m[1] for m in (((gi, op.results[0]) for op in index_masks(graph, gi))
                                if gi in cone else ())}
        neg: dict[int, frozenset[Mask]] = {}
        zero: dict[int, frozenset[Mask]] = {}
        for bid, t in zip(n.block_args, n.inputs, strict=False):
            neg[bid], zero[bid] = neg_t.get(t, empty), zero_t.get(t, empty)
        for op in n.body:
            if not op.results:
                continue
            r, a = op.results[0], op.operands
            ng = [neg.get(x, empty) for x in a]
            zr = [zero.get(x, empty) for x in a]
            if op.name == "arith.select" and r in masks:
                neg[r] = frozenset({(gi, r)}) | ng[1]
            elif op.name == "arith.select":
                zero[r] = zr[1] & zr[2]
                neg[r] = ng[1] & ng[2]
            elif op.name == "arith.subf":
                neg[r] = ng[0]
            elif op.name == "arith.addf":
                neg[r] = ng[0] | ng[1]
            elif op.name in ("math.exp", "math.exp2"):
                zero[r] = ng[0]
            elif op.name == "arith.mulf":
                zero[r] = zr[0] | zr[1]
            elif op.name in ("arith.divf", "arith.truncf", "arith.extf"):
                zero[r] = zr[0]
                if op.name != "arith.divf":
                    neg[r] = ng[0]
        return neg, zero

    for gi in cone:
        neg, zero = walk(gi)
        r, y = gens[gi].results[0], gens[gi].yields[0]
        neg_t[r], zero_t[r] = neg.get(y, empty), zero.get(y, empty)
    common: frozenset[Mask] | None = None
    for f in outs:
        _, zero = walk(f.gi)
        z = zero.get(f.lhs, empty)
        common = z if common is None else common & z
    return tuple(sorted(common or ()))
