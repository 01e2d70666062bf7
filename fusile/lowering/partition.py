"""Fused MLIR graph -> kernel plan: which linalg generics share a kernel.

Every loop of every generic and every dim of every tensor is put in a *dim class* (union-find
through the indexing maps), so a kernel's domain is a set of classes. A kernel is a run of
generics (in program order) that:
  - reduce, if at all, over one common set of classes R (the rest, P, index the program grid);
  - never use two loops of one generic in the same class (a transpose inside a kernel);
  - are not contractions (those get their own kernel; issue 7 gives them tl.dot).
Anything else starts a new kernel, with the tensor between them in HBM, so every program runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fusile.lowering.graph import Empty, Generic, Graph, Op

POINTWISE, REDUCTION, CONTRACTION = "pointwise", "reduction", "contraction"


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
    """One launch: the generics it runs and the tensors it moves through HBM."""

    index: int
    kind: str
    generics: list[int]  # indices into graph.nodes, in program order
    reduced: list[tuple]  # classes reduced over (R)
    domain: list[tuple]  # all classes the kernel touches
    reads: list[int] = field(default_factory=list)  # tensor ids read from HBM
    writes: list[int] = field(default_factory=list)  # tensor ids written to HBM
    locs: list[str] = field(default_factory=list)


@dataclass
class Plan:
    graph: Graph
    classes: Classes
    kernels: list[Kernel]
    fills: dict[int, int]  # tensor id -> the value id a fill generic broadcasts

    def tensor_class(self, t: int, axis: int) -> tuple:
        return self.classes.find(("dim", t, axis))

    def loop_class(self, g: int, loop: int) -> tuple:
        return self.classes.find(("loop", g, loop))


def _is_fill(g: Generic) -> bool:
    return not g.inputs and not g.body and len(g.yields) == 1


def _is_contraction(gi: int, g: Generic, cls: Classes) -> bool:
    """A reduction whose tensor inputs each miss a different parallel loop (matmul-like)."""
    if not g.reduction_loops:
        return False
    parallel = {i for i, it in enumerate(g.iterators) if it == "parallel"}
    missing = []
    for m in g.maps[: len(g.inputs)]:
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


def partition(graph: Graph) -> Plan:
    cls = _classes(graph)
    ones = _static_one(graph, cls)
    fills: dict[int, int] = {}
    kernels: list[Kernel] = []
    current: list[int] = []
    reduced: set[tuple] | None = None

    def close() -> None:
        nonlocal current, reduced
        if current:
            kernels.append(_make_kernel(len(kernels), graph, cls, ones, current, reduced))
        current, reduced = [], None

    for gi, node in enumerate(graph.nodes):
        if not isinstance(node, Generic):
            continue
        if _is_fill(node) and all(_only_init(graph, r) for r in node.results):
            fills[node.results[0]] = node.yields[0]
            continue
        loops = [cls.find(("loop", gi, i)) for i in range(node.n_loops)]
        real = [c for c in loops if c not in ones]
        transposed = len(set(real)) != len(real)
        red = {cls.find(("loop", gi, i)) for i in node.reduction_loops} - ones
        if _is_contraction(gi, node, cls) or transposed:
            close()
            kernels.append(_make_kernel(len(kernels), graph, cls, ones, [gi], red,
                                        kind=CONTRACTION if not transposed else None))
            continue
        compatible = True
        if red and reduced is not None and red != reduced:
            compatible = False
        if red and reduced is None and current:
            # a reduction over R joins only if nothing earlier in the kernel spans R without
            # reducing it in a way it cannot follow (elementwise over R is fine: same domain)
            compatible = True
        if not compatible:
            close()
        current.append(gi)
        if red:
            reduced = red
    close()
    plan = Plan(graph, cls, kernels, fills)
    _io(plan)
    return plan


def _only_init(graph: Graph, t: int) -> bool:
    """True if tensor t is used only as the init (outs) of other generics."""
    if t in graph.results:
        return False
    return not any(isinstance(node, Generic) and t in node.inputs for node in graph.nodes)


def _make_kernel(index: int, graph: Graph, cls: Classes, ones: set[tuple], gens: list[int],
                 reduced: set[tuple] | None, kind: str | None = None) -> Kernel:
    domain: list[tuple] = []
    for gi in gens:
        node = graph.nodes[gi]
        assert isinstance(node, Generic)
        for i in range(node.n_loops):
            c = cls.find(("loop", gi, i))
            if c not in ones and c not in domain:
                domain.append(c)
    red = sorted(reduced or set())
    if kind is None:
        kind = REDUCTION if red else POINTWISE
    locs = []
    for gi in gens:
        node = graph.nodes[gi]
        assert isinstance(node, Generic)
        locs.append(node.loc)
    return Kernel(index, kind, gens, red, domain, locs=locs)


def _io(plan: Plan) -> None:
    """Decide what each kernel reads from and writes to HBM."""
    graph = plan.graph
    producer: dict[int, int] = {}
    for k in plan.kernels:
        for gi in k.generics:
            node = graph.nodes[gi]
            assert isinstance(node, Generic)
            for r in node.results:
                producer[r] = k.index
    args = set(graph.args)
    for k in plan.kernels:
        for gi in k.generics:
            node = graph.nodes[gi]
            assert isinstance(node, Generic)
            for t in [*node.inputs, *node.outputs]:
                if t in plan.fills or t not in graph.tensors:
                    continue
                if (t in args or producer.get(t, k.index) != k.index) and t not in k.reads:
                    if _is_empty(graph, t):
                        continue
                    k.reads.append(t)
    for k in plan.kernels:
        for gi in k.generics:
            node = graph.nodes[gi]
            assert isinstance(node, Generic)
            for r in node.results:
                used_elsewhere = any(r in other.reads for other in plan.kernels
                                     if other.index != k.index)
                if (r in graph.results or used_elsewhere) and r not in k.writes:
                    k.writes.append(r)


def _is_empty(graph: Graph, t: int) -> bool:
    return any(isinstance(n, Empty) and n.result == t for n in graph.nodes)


def scalar_ops(graph: Graph) -> list[Op]:
    return [n for n in graph.nodes if isinstance(n, Op)]
