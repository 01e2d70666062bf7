"""Which chains of generics become one kernel each, taken whole before the generic-by-generic
partition when their inner tensors never need to reach HBM: attention forward
(softmax(mods(q @ k^T)) @ v) and backward (out dots over recomputed score tiles, one kernel
per reduced side), and contractions whose rows are reduced (lowering/dot_rows.py: a linear
layer's cross-entropy)."""

from __future__ import annotations

from fusile.lowering import attention, attention_grad, dot_rows
from fusile.lowering.attention_grad import GradForm
from fusile.lowering.contraction import DotForm
from fusile.lowering.graph import Generic, Graph
from fusile.lowering.groups import Classes, Group, gen_of

Flash = dict[int, tuple[attention.AttentionForm, list[int]]]


def _unit_axis(dots: tuple[DotForm, ...], ones: set[tuple], cls: Classes) -> bool:
    """Whether a dot's m, n or k loop has static extent 1 (a query length or head dim of 1,
    specialised as a broadcast dim). The flash kernels tile those axes; such chains take the
    general kernels instead, which compute the same math (and, at a query length of 1, move
    the same bytes: K and V once, the scores are one row)."""
    return any(cls.find(("loop", d.gi, x)) in ones for d in dots for x in (d.m, d.n, d.k))


def attention_chains(graph: Graph, ones: set[tuple], cls: Classes) -> Flash:
    """Attention chains whose inner tensors (scores, row statistics) nothing else reads, but
    for elementwise functions of the row statistics (a log-sum-exp output), which join the
    kernel as epilogue: keyed by their first generic (q @ k^T), with every member in program
    order."""
    out: Flash = {}
    for gi, node in enumerate(graph.nodes):
        if not isinstance(node, Generic) or len(node.reduction_loops) != 1:
            continue
        form = attention.find(graph, gi)
        if form is None or _unit_axis((form.qk, form.pv), ones, cls):
            continue
        members = sorted({form.qk.gi, *form.mods, form.row_max, form.shifted, form.row_sum,
                          *form.stats, gi})
        stats = {r for mi in form.stats for r in gen_of(graph, mi).results}
        inner = {r for mi in members if mi != gi for r in gen_of(graph, mi).results}
        if (inner - stats) & set(graph.results):
            continue
        readers = [n for j, n in enumerate(graph.nodes) if isinstance(n, Generic) and
                   j not in members and inner & set(n.inputs)]
        if any(n.reduction_loops or (inner - stats) & set(n.inputs) for n in readers):
            continue
        trial = Group(graph, ones, cls)
        trial.attn = form
        if all(trial.try_add(mi) for mi in members) and _distinct_roles(trial, form):
            out[form.qk.gi] = (form, members)
    return out


def _distinct_roles(group: Group, form: attention.AttentionForm) -> bool:
    """Whether the chain's rows, keys, head dim and value dim are four loops. One tensor read
    as both K and V (`softmax(q @ k.T) @ k`) ties the head dim to the value dim; the flash
    kernel tiles them separately, so such a chain takes the general kernels."""
    qk, pv = form.qk, form.pv
    roles = [group.uf.find((qk.gi, x)) for x in (qk.m, qk.n, qk.k)]
    return len({*roles, group.uf.find((pv.gi, pv.n))}) == 4


def grad_kernels(graph: Graph, ones: set[tuple], cls: Classes, taken: set[int]
                 ) -> list[GradForm]:
    """Attention backward kernels (lowering/attention_grad.py) whose members fit one group
    each. Generics in `taken` belong to forward chains."""
    def same(a: tuple[int, int], b: tuple[int, int]) -> bool:
        return cls.find(("loop", *a)) == cls.find(("loop", *b))

    forms = attention_grad.find(graph, same, taken)
    if any(_unit_axis((*f.scores, *f.outs), ones, cls) for f in forms):
        return []
    for f in forms:
        trial = Group(graph, ones, cls)
        trial.grad = f
        if not all(trial.try_add(mi) for mi in f.members):
            return []
    return forms


def row_reduced_dots(graph: Graph, ones: set[tuple], cls: Classes, taken: set[int]
                     ) -> dict[int, dot_rows.DotRowsForm]:
    """Contractions whose rows are reduced in the same kernel (lowering/dot_rows.py) and
    whose generics fit one kernel, keyed by the contraction; generics in `taken` belong to
    attention chains."""
    out: dict[int, dot_rows.DotRowsForm] = {}
    for gi, node in enumerate(graph.nodes):
        if not isinstance(node, Generic) or gi in taken:
            continue
        form = dot_rows.find(graph, gi, cls, ones)
        if form is None or taken & set(form.members):
            continue
        trial = Group(graph, ones, cls)
        trial.rows = form
        d = form.dot
        if all(trial.try_add(mi) for mi in form.members) and \
                len({trial.uf.find((d.gi, x)) for x in (d.m, d.n, d.k)}) == 3:
            out[gi] = form
    return out
