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

from dataclasses import dataclass, field

from fusile.lowering import attention
from fusile.lowering.contraction import DotForm, dot_form
from fusile.lowering.graph import Empty, Generic, Graph

POINTWISE, REDUCTION = "pointwise", "reduction"
CONTRACTION, ATTENTION = "contraction", "attention"


class Classes:
    """Union-find over ("loop", generic index, loop) and ("dim", tensor id, axis) keys."""

    def __init__(self) -> None:
        self.parent: dict[tuple, tuple] = {}

    def find(self, k: tuple) -> tuple:
        self.parent.setdefault(k, k)
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def union(self, a: tuple, b: tuple) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class Kernel:
    """One launch: the generics it runs and the tensors it moves through HBM.

    Index classes are the kernel's own (ints): loops of its generics that must share an index
    (through a tensor one produces and another reads, or one both read). Each maps to a global
    class, which gives its size."""

    index: int
    kind: str
    generics: list[int]  # indices into graph.nodes, in program order
    reduced: list[int]  # index classes reduced over (R)
    domain: list[int]  # all index classes of the kernel
    loop_class: dict[tuple[int, int], int]  # (generic, loop) -> index class; absent: extent 1
    class_global: dict[int, tuple]  # index class -> global (size) class
    reads: list[int] = field(default_factory=list)  # tensor ids read from HBM
    writes: list[int] = field(default_factory=list)  # tensor ids written to HBM
    locs: list[str] = field(default_factory=list)
    dot: DotForm | None = None  # a contraction kernel's tl.dot (None: gathered products)
    attn: attention.AttentionForm | None = None  # an attention kernel's chain

    def access(self, gi: int, m: tuple[int | None, ...]) -> list[int | None]:
        """Index class per tensor axis for generic gi reading/writing through map m."""
        return [None if e is None else self.loop_class.get((gi, e)) for e in m]


@dataclass
class Plan:
    graph: Graph
    classes: Classes  # global: dims merged here have equal sizes
    kernels: list[Kernel]
    fills: dict[int, int]  # tensor id -> the value id a fill generic broadcasts
    ones: set[tuple] = field(default_factory=set)  # global classes of static extent 1

    def tensor_class(self, t: int, axis: int) -> tuple:
        return self.classes.find(("dim", t, axis))

    def loop_class(self, g: int, loop: int) -> tuple:
        return self.classes.find(("loop", g, loop))

    def reduces(self, gi: int) -> bool:
        """True if generic gi reduces over a class wider than 1 (else it is elementwise)."""
        node = self.graph.nodes[gi]
        assert isinstance(node, Generic)
        return any(self.loop_class(gi, i) not in self.ones for i in node.reduction_loops)


def _is_fill(g: Generic) -> bool:
    return not g.inputs and not g.body and len(g.yields) == 1


def _is_contraction(g: Generic, free: set[int]) -> bool:
    """A reduction whose tensor inputs each miss a different parallel loop (matmul-like).
    Inputs in `free` (positions computed from nothing) do not count: they are recomputed."""
    if not g.reduction_loops:
        return False
    parallel = {i for i, it in enumerate(g.iterators) if it == "parallel"}
    missing = []
    for t, m in zip(g.inputs, g.maps[: len(g.inputs)], strict=True):
        if t in free:
            continue
        present = {e for e in m if e is not None}
        missing.append(frozenset(parallel - present))
    nonempty = {mi for mi in missing if mi}
    return len(nonempty) >= 2


def _classes(graph: Graph) -> Classes:
    cls = Classes()
    for gi, node in enumerate(graph.nodes):
        if not isinstance(node, Generic):
            continue
        operands = [*node.inputs, *node.outputs]
        for t, m in zip(operands, node.maps, strict=True):
            for axis, e in enumerate(m):
                if e is not None:
                    cls.union(("loop", gi, e), ("dim", t, axis))
        out_maps = node.maps[len(node.inputs):]
        for r, m in zip(node.results, out_maps, strict=True):
            for axis, e in enumerate(m):
                if e is not None:
                    cls.union(("loop", gi, e), ("dim", r, axis))
    return cls


def _static_one(graph: Graph, cls: Classes) -> set[tuple]:
    """Classes whose extent is statically 1 (broadcast dims): they index nothing."""
    ones: set[tuple] = set()
    sizes: dict[tuple, set] = {}
    for t, info in graph.tensors.items():
        for axis, s in enumerate(info.shape):
            sizes.setdefault(cls.find(("dim", t, axis)), set()).add(s)
    for c, ss in sizes.items():
        if ss == {1}:
            ones.add(c)
    return ones


class _Group:
    """A kernel being built: its generics and their index classes (a local union-find)."""

    def __init__(self, graph: Graph, ones: set[tuple], cls: Classes):
        self.graph, self.ones, self.cls = graph, ones, cls
        self.gens: list[int] = []
        self.uf = Classes()
        self.produced: dict[int, tuple[int, tuple]] = {}  # tensor -> (generic, out map)
        self.read: dict[int, tuple[int, tuple]] = {}  # HBM tensor -> (first reader, map)
        self.reduced: set | None = None
        self.dot: DotForm | None = None  # set once the contraction is in
        self.attn: attention.AttentionForm | None = None  # an attention chain: no R check

    def real_loops(self, gi: int) -> list[int]:
        node = self.graph.nodes[gi]
        assert isinstance(node, Generic)
        return [i for i in range(node.n_loops) if self.cls.find(("loop", gi, i)) not in self.ones]

    def try_add(self, gi: int) -> bool:
        """Add generic gi if it fits; leave the group unchanged and return False if not."""
        node = self.graph.nodes[gi]
        assert isinstance(node, Generic)
        uf = Classes()
        uf.parent = dict(self.uf.parent)
        real = set(self.real_loops(gi))
        for i in real:
            uf.find((gi, i))
        n_in = len(node.inputs)

        def link(other: int, om: tuple, m: tuple) -> None:
            for a, b in zip(om, m, strict=True):
                if a is not None and b is not None and (other, a) in uf.parent and \
                        b in real:
                    uf.union((other, a), (gi, b))

        for t, m in zip(node.inputs, node.maps[:n_in], strict=True):
            if t in self.produced:
                link(*self.produced[t], m)
            elif t in self.read and self.read[t][0] != gi:
                link(*self.read[t], m)
        for g in [*self.gens, gi]:  # no two loops of one generic may share an index
            roots = [uf.find((g, i)) for i in self.real_loops(g)]
            if len(set(roots)) != len(roots):
                return False
        red = {uf.find((gi, i)) for i in node.reduction_loops if i in real}
        if self.dot is not None and not self._fits_dot(uf, gi, real, red):
            return False
        old = {uf.find(c) for c in self.reduced} if self.reduced else None
        if red and old is not None and red != old and self.attn is None:
            return False
        self.uf = uf
        self.gens.append(gi)
        if red:
            self.reduced = red
        for t, m in zip(node.inputs, node.maps[:n_in], strict=True):
            if t not in self.produced:
                self.read.setdefault(t, (gi, m))
        for r, m in zip(node.results, node.maps[n_in:], strict=True):
            self.produced[r] = (gi, m)
        return True

    def _fits_dot(self, uf: Classes, gi: int, real: set[int], red: set) -> bool:
        """Once a contraction kernel has its dot, a generic joins only as epilogue: elementwise
        over the result's loops (batch, m, n). Operand producers (prologue) were added before
        the dot, as producers recomputed per tile."""
        d = self.dot
        assert d is not None
        if red:
            return False
        side = {uf.find((d.gi, loop)) for loop in (*d.batch, d.m, d.n)}
        return {uf.find((gi, i)) for i in real} <= side

    def kernel(self, index: int, kind: str | None) -> Kernel:
        ids: dict[tuple, int] = {}
        loop_class: dict[tuple[int, int], int] = {}
        class_global: dict[int, tuple] = {}
        for gi in self.gens:
            for i in self.real_loops(gi):
                root = self.uf.find((gi, i))
                c = ids.setdefault(root, len(ids))
                loop_class[(gi, i)] = c
                class_global.setdefault(c, self.cls.find(("loop", gi, i)))
        reduced = sorted({ids[self.uf.find(r)] for r in self.reduced or ()})
        if kind is None:
            kind = REDUCTION if reduced else POINTWISE
        locs = []
        for gi in self.gens:
            node = self.graph.nodes[gi]
            assert isinstance(node, Generic)
            locs.append(node.loc)
        return Kernel(index, kind, list(self.gens), reduced, sorted(set(ids.values())),
                      loop_class, class_global, locs=locs,
                      dot=self.dot if self.attn is None else None, attn=self.attn)


def partition(graph: Graph) -> Plan:
    """Place each generic in the earliest kernel its inputs allow that it fits (so an epilogue
    joins the row kernel it needs, not a later column kernel), and recompute cheap elementwise
    producers of program arguments in the kernels that read them instead of passing them
    through HBM."""
    cls = _classes(graph)
    ones = _static_one(graph, cls)
    fills: dict[int, int] = {}
    groups: list[_Group] = []
    kinds: list[str | None] = []
    home: dict[int, int] = {}  # generic -> the group that computes it first
    free: set[int] = set()  # tensors computed from no tensor at all
    producer: dict[int, int] = {}  # tensor -> generic
    flash = _attention_forms(graph, ones)
    for gi, node in enumerate(graph.nodes):
        if not isinstance(node, Generic) or gi in home:
            continue
        if gi in flash:  # the whole chain, q @ k^T to P @ v, is one kernel
            chain, members = flash[gi]
            group = _Group(graph, ones, cls)
            group.attn = chain
            for mi in members:
                assert group.try_add(mi), "attention members were checked to fit"
                home[mi] = len(groups)
                for r in _gen_of(graph, mi).results:
                    producer[r] = mi
            group.dot = chain.pv  # the epilogue joins over the output's loops
            groups.append(group)
            kinds.append(ATTENTION)
            continue
        if _is_fill(node) and all(_only_init(graph, r) for r in node.results):
            fills[node.results[0]] = node.yields[0]
            continue
        for r in node.results:
            producer[r] = gi
            if not node.inputs:  # positions (arange/index): recomputable anywhere
                free.add(r)
        deps = [home[producer[t]] for t in node.inputs if producer.get(t) in home]
        earliest = max(deps, default=0)
        if _is_contraction(node, free):  # a kernel of its own, which its epilogue joins
            group = _Group(graph, ones, cls)
            form = dot_form(gi, node)
            if form is not None and all(group.cls.find(("loop", gi, x)) not in ones
                                        for x in (form.m, form.n, form.k)):
                _add_with_producers(group, gi, graph, producer, home, len(groups))
                group.dot = form
            else:
                group.try_add(gi)
            groups.append(group)
            kinds.append(CONTRACTION)
            home[gi] = len(groups) - 1
            continue
        for gidx in range(earliest, len(groups)):
            open_ = kinds[gidx] is None or groups[gidx].dot is not None
            if open_ and _add_with_producers(groups[gidx], gi, graph, producer, home, gidx):
                home[gi] = gidx
                break
        else:
            group = _Group(graph, ones, cls)
            _add_with_producers(group, gi, graph, producer, home, len(groups))
            groups.append(group)
            kinds.append(None)
            home[gi] = len(groups) - 1
    kernels = [g.kernel(i, k) for i, (g, k) in enumerate(zip(groups, kinds, strict=True))]
    plan = Plan(graph, cls, kernels, fills, ones)
    _io(plan)
    return plan


def _gen_of(graph: Graph, gi: int) -> Generic:
    node = graph.nodes[gi]
    assert isinstance(node, Generic)
    return node


_Flash = dict[int, tuple[attention.AttentionForm, list[int]]]


def _attention_forms(graph: Graph, ones: set[tuple]) -> _Flash:
    """Attention chains whose inner tensors (scores, row statistics) nothing else reads, but
    for elementwise functions of the row statistics (a log-sum-exp output), which join the
    kernel as epilogue: keyed by their first generic (q @ k^T), with every member in program
    order."""
    out: _Flash = {}
    for gi, node in enumerate(graph.nodes):
        if not isinstance(node, Generic) or len(node.reduction_loops) != 1:
            continue
        form = attention.find(graph, gi)
        if form is None:
            continue
        members = sorted({form.qk.gi, *form.mods, form.row_max, form.shifted, form.row_sum,
                          *form.stats, gi})
        stats = {r for mi in form.stats for r in _gen_of(graph, mi).results}
        inner = {r for mi in members if mi != gi for r in _gen_of(graph, mi).results}
        if (inner - stats) & set(graph.results):
            continue
        readers = [n for j, n in enumerate(graph.nodes) if isinstance(n, Generic) and
                   j not in members and inner & set(n.inputs)]
        if any(n.reduction_loops or (inner - stats) & set(n.inputs) for n in readers):
            continue
        trial = _Group(graph, ones, _classes(graph))
        trial.attn = form
        if all(trial.try_add(mi) for mi in members):
            out[form.qk.gi] = (form, members)
    return out


def _add_with_producers(group: _Group, gi: int, graph: Graph, producer: dict[int, int],
                        home: dict[int, int], gidx: int) -> bool:
    """Add gi to group, first recomputing there any elementwise producer (computed in another
    kernel) whose own inputs are all program arguments: cheaper than a round trip through HBM.
    Leaves the group unchanged if gi does not fit."""
    node = graph.nodes[gi]
    assert isinstance(node, Generic)
    saved = (list(group.gens), dict(group.uf.parent), dict(group.produced), dict(group.read),
             group.reduced)
    for t in node.inputs:
        p = producer.get(t)
        if p is None or p in group.gens or home.get(p) == gidx:
            continue
        pn = graph.nodes[p]
        assert isinstance(pn, Generic)
        args_only = all(u in graph.args or u not in producer for u in pn.inputs)
        if not pn.reduction_loops and args_only:
            group.try_add(p)  # best effort: if it does not fit, the tensor is read instead
    if group.try_add(gi):
        return True
    group.gens, group.uf.parent, group.produced, group.read, group.reduced = (
        saved[0], saved[1], saved[2], saved[3], saved[4])
    return False


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

