"""Fused MLIR graph -> kernel plan: which linalg generics share a kernel.

Two kinds of classes. Global *size classes* (union-find over every loop and tensor dim through
the indexing maps) say which extents are equal. Each kernel has its own *index classes*: loops
that must share an index because one generic produces a tensor another reads, or both read it.
A generic joins the earliest kernel its inputs allow where:
  - it reduces, if at all, over the kernel's one set of classes R (the rest, P, index the grid);
  - no two loops of one generic end up in the same index class (a transpose inside a kernel);
  - it is not a contraction. A contraction in dot form (lowering/contraction.py) starts a
    contraction kernel that elementwise consumers of its result over its parallel loops join
    (the epilogue: bias, activation, residual, row and column scales, casts); other
    contractions get a kernel of their own (a reduction over gathered products).
Elementwise producers of arguments are recomputed where they are read instead of stored. What
does not fit starts a new kernel, with the tensor between them in HBM, so every program runs.
"""

from __future__ import annotations

from fusile.lowering.contraction import dot_form
from fusile.lowering.flash_chains import attention_chains, grad_kernels, row_reduced_dots
from fusile.lowering.graph import Empty, Generic, Graph
from fusile.lowering.groups import (
    ATTENTION,
    ATTENTION_GRAD,
    CONTRACTION,
    DOT_ROWS,
    POINTWISE,
    REDUCTION,
    ROW_COLUMNS,
    Classes,
    Group,
    Kernel,
    Plan,
    gen_of,
    is_contraction,
    is_fill,
    loop_classes,
    static_ones,
)

__all__ = ["ATTENTION", "ATTENTION_GRAD", "CONTRACTION", "DOT_ROWS", "POINTWISE", "REDUCTION",
           "ROW_COLUMNS", "Classes",
           "Kernel", "Plan", "partition"]


def partition(graph: Graph, flash: bool = True) -> Plan:
    """Place each generic in the earliest kernel its inputs allow that it fits (so an epilogue
    joins the row kernel it needs, not a later column kernel), and recompute cheap elementwise
    producers of program arguments in the kernels that read them instead of passing them
    through HBM. `flash=False` leaves attention chains and their backwards to contraction
    and row kernels (the scores through HBM): for head dims too wide to hold on chip."""
    cls = loop_classes(graph)
    ones = static_ones(graph, cls)
    fills: dict[int, int] = {}
    groups: list[Group] = []
    kinds: list[str | None] = []
    home: dict[int, int] = {}  # generic -> the group that computes it first
    free: set[int] = set()  # tensors computed from no tensor at all
    producer: dict[int, int] = {}  # tensor -> generic
    chains = attention_chains(graph, ones, cls) if flash else {}
    taken = {mi for _, members in chains.values() for mi in members}
    grads = grad_kernels(graph, ones, cls, taken) if flash else []
    grad_members = {mi for f in grads for mi in f.members}
    reduced_dots = row_reduced_dots(graph, ones, cls, taken | grad_members)
    deferred = _deferrable(graph, taken | grad_members | {
        mi for f in reduced_dots.values() for mi in f.members})
    # placed at their first out dot: every producer of their inputs is placed by then
    first_grad = min((o.gi for f in grads for o in f.outs), default=None)
    for gi, node in enumerate(graph.nodes):
        if not isinstance(node, Generic) or gi in home:
            continue
        if gi in grad_members and gi != first_grad:
            continue  # only the attention backward kernels read it
        if gi == first_grad:  # attention backward: each side's kernel takes all it needs
            for gform in grads:
                group = Group(graph, ones, cls)
                group.grad = gform
                for mi in gform.members:
                    assert group.try_add(mi), "attention backward members were checked to fit"
                    home.setdefault(mi, len(groups))
                    for r in gen_of(graph, mi).results:
                        producer[r] = mi
                for out in gform.outs:
                    home[out.gi] = len(groups)  # its epilogue joins this kernel
                groups.append(group)
                kinds.append(ATTENTION_GRAD)
            continue
        if gi in chains:  # the whole chain, q @ k^T to P @ v, is one kernel
            chain, members = chains[gi]
            group = Group(graph, ones, cls)
            group.attn = chain
            for mi in members:
                assert group.try_add(mi), "attention members were checked to fit"
                home[mi] = len(groups)
                for r in gen_of(graph, mi).results:
                    producer[r] = mi
            group.dot = chain.pv  # the epilogue joins over the output's loops
            groups.append(group)
            kinds.append(ATTENTION)
            continue
        if gi in reduced_dots:  # the contraction and what reduces its rows: one kernel
            rows = reduced_dots[gi]
            group = Group(graph, ones, cls)
            group.rows = rows
            for mi in rows.members:
                assert group.try_add(mi), "row-reduced contraction members were checked to fit"
                home[mi] = len(groups)
                for r in gen_of(graph, mi).results:
                    producer[r] = mi
            groups.append(group)
            kinds.append(DOT_ROWS)
            continue
        if is_fill(node) and all(_only_init(graph, r) for r in node.results):
            fills[node.results[0]] = node.yields[0]
            continue
        for r in node.results:
            producer[r] = gi
            if not node.inputs:  # positions (arange/index): recomputable anywhere
                free.add(r)
        if gi in deferred:
            continue  # computed in the kernels that read it
        deps = [home[producer[t]] for t in node.inputs
                if producer.get(t) in home and producer[t] not in deferred]
        earliest = max(deps, default=0)
        if is_contraction(node, free):  # a kernel of its own, which its epilogue joins
            group = Group(graph, ones, cls)
            form = dot_form(gi, node)
            if form is not None and all(group.cls.find(("loop", gi, x)) not in ones
                                        for x in (form.m, form.n, form.k)):
                _add_with_producers(group, gi, graph, producer, home, len(groups), deferred)
                group.dot = form
            else:
                group.try_add(gi)
            groups.append(group)
            kinds.append(CONTRACTION)
            home[gi] = len(groups) - 1
            continue
        for gidx in range(earliest, len(groups)):
            # a tiled kernel takes epilogues only: generics that read what it computes (one
            # that does not, a one-element value say, would run per tile, or never when
            # the tiles are empty)
            tiled = groups[gidx].dot is not None or groups[gidx].grad is not None
            open_ = kinds[gidx] is None or (tiled and any(
                t in groups[gidx].produced for t in node.inputs))
            if open_ and _add_with_producers(groups[gidx], gi, graph, producer, home, gidx,
                                             deferred):
                home[gi] = gidx
                break
        else:
            group = Group(graph, ones, cls)
            if not _add_with_producers(group, gi, graph, producer, home, len(groups), deferred):
                raise AssertionError(f"generic {gi} fits no kernel, not even a new one")
            groups.append(group)
            kinds.append(None)
            home[gi] = len(groups) - 1
    kernels = [g.kernel(i, k) for i, (g, k) in enumerate(zip(groups, kinds, strict=True))]
    plan = Plan(graph, cls, kernels, fills, ones)
    _io(plan)
    return plan


def _add_with_producers(group: Group, gi: int, graph: Graph, producer: dict[int, int],
                        home: dict[int, int], gidx: int, deferred: set[int]) -> bool:
    """Add gi to group, first recomputing there any elementwise producer (computed in another
    kernel) whose own inputs are all program arguments: cheaper than a round trip through HBM.
    Where a recomputed producer keeps gi out (gi reads it two ways), gi reads it instead.
    A deferred producer (no kernel of its own) must be recomputed here, ahead of gi, or have
    been computed by an earlier kernel. Leaves the group unchanged if gi does not fit."""
    fits, recomputed = _add(group, gi, graph, producer, home, gidx, deferred, True)
    return fits or (recomputed and _add(group, gi, graph, producer, home, gidx, deferred,
                                        False)[0])


def _add(group: Group, gi: int, graph: Graph, producer: dict[int, int], home: dict[int, int],
         gidx: int, deferred: set[int], recompute: bool) -> tuple[bool, bool]:
    """(gi fits, a producer was recomputed for it: without it gi may fit)."""
    node = graph.nodes[gi]
    assert isinstance(node, Generic)
    saved = (list(group.gens), dict(group.uf.parent), dict(group.produced), dict(group.read),
             group.reduced, list(group.columns))
    late = []  # deferred producers that only gi ties to the kernel: placed ahead of it after
    recomputed = False
    for t in node.inputs:
        p = producer.get(t)
        if p is None or p in group.gens:
            continue
        if p in deferred:
            if not group.try_add(p):
                late.append(p)
            continue
        if home.get(p) == gidx or not recompute:
            continue
        pn = graph.nodes[p]
        assert isinstance(pn, Generic)
        args_only = all(u in graph.args or u not in producer for u in pn.inputs)
        if not pn.reduction_loops and args_only:
            # best effort: if it does not fit, the tensor is read instead
            recomputed = group.try_add(p) or recomputed
    if group.try_add(gi) and all(group.try_add(p, before=gi) or home.get(p, gidx) < gidx
                                 for p in late):
        for p in deferred & set(group.gens):
            home.setdefault(p, gidx)
        return True, recomputed
    (group.gens, group.uf.parent, group.produced, group.read, group.reduced,
     group.columns) = saved
    return False, recomputed


def _deferrable(graph: Graph, special: set[int]) -> set[int]:
    """Elementwise generics over program arguments only (a norm backward's rsqrt of a kept
    statistic, dy * w) whose every reader is a plain generic: each is computed in the kernels
    that read it, ahead of its reader, instead of first in a kernel of its own, which would
    hold every reader back to that kernel or a later one (the dw column reduction, say, which
    dx would then join)."""
    gens = [(gi, n) for gi, n in enumerate(graph.nodes) if isinstance(n, Generic)]
    producer = {r: gi for gi, n in gens for r in n.results}
    free = {r for _, n in gens if not n.inputs for r in n.results}
    out: set[int] = set()
    for gi, n in gens:
        if gi in special or n.reduction_loops or not n.inputs or any(
                u in producer for u in n.inputs):
            continue
        mine = set(n.results)
        readers = [(gj, m) for gj, m in gens if mine & set(m.inputs)]
        if readers and not any(mine & set(m.outputs) for _, m in gens) and not any(
                gj in special or is_contraction(m, free) or not _one_view(m, mine)
                for gj, m in readers):
            out.add(gi)
    return out


def _one_view(reader: Generic, tensors: set[int]) -> bool:
    """The reader indexes these tensors one way: recomputed in the reader's kernel, a
    producer read as t[j] and t[i] (`stack([x, exp(x)]) ... + exp(x)` broadcast both ways)
    would tie i to j, and the reader would fit no kernel."""
    n_in = len(reader.inputs)
    return len({tuple(m) for t, m in zip(reader.inputs, reader.maps[:n_in], strict=True)
                if t in tensors}) <= 1


def _only_init(graph: Graph, t: int) -> bool:
    """True if tensor t is used only as the init (outs) of other generics."""
    if t in graph.results:
        return False
    return not any(isinstance(node, Generic) and t in node.inputs for node in graph.nodes)


def _io(plan: Plan) -> None:
    """Decide what each kernel reads from and writes to HBM. A kernel never reads what one of
    its own generics computes; a tensor another kernel needs is written by the first kernel
    that computes it (producers may be recomputed in several kernels)."""
    graph = plan.graph
    made: list[set[int]] = []
    for k in plan.kernels:
        out: set[int] = set()
        for gi in k.generics:
            node = graph.nodes[gi]
            assert isinstance(node, Generic)
            out.update(node.results)
        made.append(out)
    args = set(graph.args)
    for k in plan.kernels:
        for gi in k.generics:
            node = graph.nodes[gi]
            assert isinstance(node, Generic)
            for t in [*node.inputs, *node.outputs]:
                if t in plan.fills or t not in graph.tensors or t in made[k.index]:
                    continue
                if (t in args or any(t in m for m in made)) and t not in k.reads and \
                        not _is_empty(graph, t):
                    k.reads.append(t)
    for k in plan.kernels:
        for t in k.reads:
            if t in args:
                continue
            writer = next(i for i, m in enumerate(made) if t in m)
            assert writer < k.index, "a kernel reads a tensor no earlier kernel computes"
            if t not in plan.kernels[writer].writes:
                plan.kernels[writer].writes.append(t)
    for r in graph.results:
        if r in args:
            continue
        writer = next(i for i, m in enumerate(made) if r in m)
        if r not in plan.kernels[writer].writes:
            plan.kernels[writer].writes.append(r)


def _is_empty(graph: Graph, t: int) -> bool:
    return any(isinstance(n, Empty) and n.result == t for n in graph.nodes)

