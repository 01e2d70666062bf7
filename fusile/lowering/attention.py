"""Recognise attention in a fused graph: `softmax(mods(q @ k^T), over j) @ v`.

After the MLIR passes, `softmax(s, axis=-1) @ v` is five generics: S = q @ k^T (a contraction
in dot form over the head dim d), T = score modifications of S (zero or more elementwise
generics: scale, masks from positions, soft-capping, biases), mx = max_j T, U = T - mx (with
softmax's guard for an all -inf row), l = sum_j exp(U), and O = sum_j (exp(U) / l) * v (a
contraction in dot form over j whose left operand is exp(U) / l). This module checks exactly
that structure; anything else is left to the other kernel classes.

A flash kernel computes O without S, T, U in HBM: per block of query rows it loops over key
blocks, keeps a running max and sum (online softmax) and rescales its accumulator.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusile.lowering.contraction import DotForm, dot_form
from fusile.lowering.graph import Generic, Graph, Op, constants, producers


@dataclass(frozen=True)
class AttentionForm:
    qk: DotForm  # S = q @ k^T: m = query rows i, n = key rows j, k = head dim d
    pv: DotForm  # O = P @ v: m = i, n = value dim e, k = j
    mods: tuple[int, ...]  # elementwise generics from S to T, in program order
    scores: int  # tensor T (the modified scores softmax runs over)
    row_max: int  # generic mx = max_j T
    shifted: int  # generic U = T - mx
    row_sum: int  # generic l = sum_j exp(U)
    masks: tuple[tuple[int, int], ...]  # (mods generic, select op result) masks of positions
    guard: int | None = None  # generic guard(mx) between mx and U, when something else reads it

    @property
    def stats(self) -> tuple[int, ...]:
        """Generics of the row statistics (max, guarded max, sum): a kernel may store
        functions of them (the log-sum-exp a backward pass needs)."""
        return tuple(g for g in (self.row_max, self.guard, self.row_sum) if g is not None)


def single(g: Generic, name: str) -> Op | None:
    op = g.defs.get(g.yields[0]) if len(g.yields) == 1 else None
    return op if op is not None and op.name == name else None


def _gen(graph: Graph, gi: int | None) -> Generic | None:
    if gi is None:
        return None
    node = graph.nodes[gi]
    return node if isinstance(node, Generic) else None


def find(graph: Graph, pv_gi: int) -> AttentionForm | None:
    """The attention ending in contraction pv_gi, or None."""
    pv_node = _gen(graph, pv_gi)
    if pv_node is None:
        return None
    pv = dot_form(pv_gi, pv_node)
    if pv is None:
        return None
    prod = producers(graph)
    by = pv_node.defs
    div = by.get(pv.lhs)  # exp(U) / l
    if div is None or div.name != "arith.divf":
        return None
    ex, lv = by.get(div.operands[0]), div.operands[1]
    if ex is None or ex.name != "math.exp":
        return None
    n_in = len(pv_node.inputs)
    args = pv_node.block_args[:n_in]
    if ex.operands[0] not in args or lv not in args:
        return None
    u_t, l_t = pv_node.inputs[args.index(ex.operands[0])], pv_node.inputs[args.index(lv)]
    sub, sm = prod.get(u_t), prod.get(l_t)
    sub_n, sum_n = _gen(graph, sub), _gen(graph, sm)
    if sub_n is None or sum_n is None or sub is None or sm is None:
        return None
    # l = sum_j exp(U)
    if sum_n.inputs != [u_t] or len(sum_n.reduction_loops) != 1:
        return None
    add = single(sum_n, "arith.addf")
    sby = sum_n.defs
    if add is None or not any(sby.get(o) is not None and sby[o].name == "math.exp" and
                              sby[o].operands[0] == sum_n.block_args[0] for o in add.operands):
        return None
    # U = T - guard(mx)
    if sub_n.reduction_loops or len(sub_n.inputs) != 2:
        return None
    t_t, mx_t = sub_n.inputs
    subf = single(sub_n, "arith.subf")
    if subf is None or subf.operands[0] != sub_n.block_args[0]:
        return None
    mx = prod.get(mx_t)
    guard = mx if is_guard(_gen(graph, mx), graph) else None
    if guard is not None:  # softmax's guard(mx) as a generic of its own (others read it)
        g_n = _gen(graph, guard)
        assert g_n is not None
        mx_t = g_n.inputs[0]
        mx = prod.get(mx_t)
    mx_n = _gen(graph, mx)
    if mx_n is None or mx is None or mx_n.inputs != [t_t] or \
            single(mx_n, "arith.maximumf") is None:
        return None
    # T = mods(S), S = q @ k^T
    mods: list[int] = []
    t = t_t
    while True:
        gi = prod.get(t)
        node = _gen(graph, gi)
        if node is None or gi is None:
            return None
        qk = dot_form(gi, node)
        if qk is not None:
            break
        if node.reduction_loops:
            return None
        from_s = [u for u in node.inputs if prod.get(u) is not None and
                  _gen(graph, prod[u]) is not None]
        chain = [u for u in from_s if _reaches_dot(graph, prod, u)]
        if len(chain) != 1:
            return None
        mods.insert(0, gi)
        t = chain[0]
    if not _axes_line_up(graph, qk, pv, mods, (t_t, mx, sub, sm, u_t)):
        return None
    masks = tuple((gi, op.results[0]) for gi in mods for op in index_masks(graph, gi))
    return AttentionForm(qk, pv, tuple(mods), t_t, mx, sub, sm, masks, guard)


def _axes_line_up(graph: Graph, qk: DotForm, pv: DotForm, mods: list[int],
                  chain: tuple[int, int, int, int, int]) -> bool:
    """The softmax runs over the key axis j of q @ k^T (the loop n of qk), and the second
    contraction sums over that same axis with the query axis i as its rows. The structure
    alone does not say so: `softmax(q @ k.T, axis=0) @ v` has the same five generics."""
    t_t, mx, sub, sm, u_t = chain
    qk_n = _gen(graph, qk.gi)
    assert qk_n is not None
    out = qk_n.maps[len(qk_n.inputs)]
    dims: tuple[int, int] | None = (out.index(qk.m), out.index(qk.n))  # (i, j) storage dims

    def through(gi: int, src: int, d: tuple[int, int] | None) -> tuple[int, int] | None:
        """Storage dims (i, j) of generic gi's result, given those of its input src."""
        node = _gen(graph, gi)
        if d is None or node is None or src not in node.inputs:
            return None
        loops = [node.maps[node.inputs.index(src)][x] for x in d]
        res = node.maps[len(node.inputs)]
        return None if any(lp is None or lp not in res for lp in loops) else \
            (res.index(loops[0]), res.index(loops[1]))

    src = qk_n.results[0]
    for gi in mods:  # find() checked each reads the chain once: follow (i, j) through it
        dims, src = through(gi, src, dims), graph.nodes[gi].results[0]  # type: ignore[union-attr]
    if src != t_t or dims is None:
        return False

    def reduces_j(gi: int, t: int, d: tuple[int, int]) -> bool:
        node = _gen(graph, gi)
        return node is not None and t in node.inputs and \
            node.maps[node.inputs.index(t)][d[1]] == node.reduction_loops[0]

    u_dims = through(sub, t_t, dims)
    if u_dims is None or not reduces_j(mx, t_t, dims) or not reduces_j(sm, u_t, u_dims):
        return False
    pv_n = _gen(graph, pv.gi)
    assert pv_n is not None
    u_map = pv_n.maps[pv_n.inputs.index(u_t)]
    return u_map[u_dims[1]] == pv.k and u_map[u_dims[0]] == pv.m


def is_guard(g: Generic | None, graph: Graph) -> bool:
    """g is exactly `select(abs(x) == inf, 0, x)` of one input: softmax's shift for a row
    whose max is infinite (all -inf, or holding +inf). It is x wherever x is finite, so a
    kernel's running max stands in."""
    if g is None or g.reduction_loops or len(g.inputs) != 1 or len(g.yields) != 1:
        return False
    return guards(g, g.yields[0], g.block_args[0], graph) and len(g.body) == 3


def guards(g: Generic, v: int, x: int, graph: Graph) -> bool:
    """Region value v of generic g is `select(abs(x) == inf, 0, x)` (three ops)."""
    by = g.defs
    sel = by.get(v)
    consts = constants(graph)
    if sel is None or sel.name != "arith.select" or sel.operands[2] != x or \
            consts.get(sel.operands[1]) != 0.0:
        return False
    cmp = by.get(sel.operands[0])
    if cmp is None or cmp.name != "arith.cmpf" or cmp.attrs.get("predicate") != "oeq" or \
            consts.get(cmp.operands[1]) != float("inf"):
        return False
    absf = by.get(cmp.operands[0])
    return absf is not None and absf.name == "math.absf" and absf.operands == [x]


def _reaches_dot(graph: Graph, prod: dict[int, int], t: int) -> bool:
    gi = prod.get(t)
    node = _gen(graph, gi)
    if node is None or gi is None:
        return False
    if dot_form(gi, node) is not None:
        return True
    return not node.reduction_loops and any(_reaches_dot(graph, prod, u) for u in node.inputs)


def index_masks(graph: Graph, gi: int) -> list[Op]:
    """select(cond, x, -inf) ops of generic gi whose condition depends on loop positions,
    scalars and tensors with one value per row and key tile (indexed by batch loops only, as
    a per-sequence cache length): masks a kernel evaluates per tile, whose bounds it can
    compute once per program."""
    node = _gen(graph, gi)
    assert node is not None
    consts = constants(graph)
    out_map = node.maps[len(node.inputs)]
    tile = {x for x in out_map[-2:] if x is not None}  # the loops of rows and keys

    def per_program(arg: int) -> bool:
        i = node.block_args.index(arg)
        return i < len(node.inputs) and not tile & set(node.maps[i])

    return [op for op in node.body if op.name == "arith.select" and
            consts.get(op.operands[2]) == float("-inf") and
            all(per_program(a) for a in node.args_of(op.operands[0]))]
