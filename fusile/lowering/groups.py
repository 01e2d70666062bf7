"""Kernels being built and the plan they form: size classes over loops and tensor dims, the
kernel record the backends read, and the group a partitioner grows one generic at a time."""

from __future__ import annotations

from dataclasses import dataclass, field

from fusile.lowering import attention, dot_rows
from fusile.lowering.attention_grad import GradForm
from fusile.lowering.contraction import DotForm
from fusile.lowering.graph import Generic, Graph

POINTWISE, REDUCTION = "pointwise", "reduction"
CONTRACTION, ATTENTION = "contraction", "attention"
ATTENTION_GRAD = "attention-grad"
ROW_COLUMNS = "rows+columns"  # a row kernel that also sums over its rows (column partials)
DOT_ROWS = "dot-rows"  # a contraction whose rows are reduced on chip (lowering/dot_rows.py)


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
    grad: GradForm | None = None  # an attention backward kernel's score tiles and out dots
    rows: dot_rows.DotRowsForm | None = None  # a rows-reduced contraction's chain
    # a rows+columns kernel's generics computed from column partials: sums over the rows (P)
    # and elementwise work on their results over the columns (R) only. The row kernel folds
    # the sums into per-program float32 partials; a combine kernel finishes them.
    columns: list[int] = field(default_factory=list)

    @property
    def flash(self) -> bool:
        """A flash kernel (attention forward or backward): it holds its head dims on chip."""
        return self.attn is not None or self.grad is not None

    @property
    def tile_dots(self) -> bool:
        """Its products run as tile dots (tensor cores), not elementwise."""
        return self.dot is not None or self.flash or self.rows is not None

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


def is_fill(g: Generic) -> bool:
    return not g.inputs and not g.body and len(g.yields) == 1


def is_contraction(g: Generic, free: set[int]) -> bool:
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


def loop_classes(graph: Graph) -> Classes:
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


def static_ones(graph: Graph, cls: Classes) -> set[tuple]:
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


class Group:
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
        self.grad: GradForm | None = None  # an attention backward kernel: no R check either
        self.rows: dot_rows.DotRowsForm | None = None  # a rows-reduced contraction: nor here
        self.columns: list[int] = []  # generics over column partials (Kernel.columns)

    def real_loops(self, gi: int) -> list[int]:
        node = self.graph.nodes[gi]
        assert isinstance(node, Generic)
        return [i for i in range(node.n_loops) if self.cls.find(("loop", gi, i)) not in self.ones]

    def try_add(self, gi: int, before: int | None = None) -> bool:
        """Add generic gi if it fits; leave the group unchanged and return False if not.
        `before`: a generic of the group that reads gi's results, which gi is placed ahead
        of and linked to through them (a producer recomputed here whose loops only its
        reader ties to the kernel's)."""
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
        late = [r for r in node.results if before is not None and r in self.read]
        for r, m in zip(node.results, node.maps[n_in:], strict=True):
            if r in late:
                link(*self.read[r], m)
        for g in [*self.gens, gi]:  # no two loops of one generic may share an index
            roots = [uf.find((g, i)) for i in self.real_loops(g)]
            if len(set(roots)) != len(roots):
                return False
        chain = self.attn is not None or self.grad is not None or self.rows is not None
        if not chain and not self._one_space(uf, gi):
            return False
        red = {uf.find((gi, i)) for i in node.reduction_loops if i in real}
        if (self.dot is not None or self.grad is not None) and \
                not self._fits_dot(uf, gi, real, red):
            return False
        old = {uf.find(c) for c in self.reduced} if self.reduced else None
        column = bool(red) and old is not None and red != old and not chain
        if column and not self._column_sum(uf, gi, real, red, old or set()):
            return False
        if any(self.produced.get(t, (-1,))[0] in self.columns for t in node.inputs):
            if red or not self._column_epilogue(uf, gi, real, old or set()):
                return False  # only the combine kernel has a column sum's result
            column = True
        if self.columns and not column and not self._span(uf, gi) <= set().union(
                *(self._span(uf, g) for g in self.gens)):
            return False  # a new row class: the column sums would count each row per value
        self.uf = uf
        self.gens.insert(self.gens.index(before) if before is not None else len(self.gens), gi)
        for r in late:
            del self.read[r]
        if column:
            self.columns.append(gi)
        elif red:
            self.reduced = red
        for t, m in zip(node.inputs, node.maps[:n_in], strict=True):
            if t not in self.produced:
                self.read.setdefault(t, (gi, m))
        for r, m in zip(node.results, node.maps[n_in:], strict=True):
            self.produced[r] = (gi, m)
        return True

    def _span(self, uf: Classes, g: int) -> set:
        """The index classes of generic g's loops."""
        return {uf.find((g, i)) for i in self.real_loops(g)}

    def _one_space(self, uf: Classes, gi: int) -> bool:
        """True if one generic's loops span every index class of the kernel with gi added:
        the grid is that generic's iteration space. Generics that share no tensor (two
        outputs of unrelated shapes) would otherwise make the kernel iterate over the product
        of their spaces: each element computed many times over, and a grid past 2**31."""
        spans = [self._span(uf, g) for g in [*self.gens, gi]]
        every = set().union(*spans)
        return any(s == every for s in spans)

    def _column_sum(self, uf: Classes, gi: int, real: set[int], red: set, rows: set) -> bool:
        """gi sums over the rows of a row kernel (its reduced classes `rows` are the
        kernel's columns): every class of the kernel is a row or a column, gi keeps only
        column classes, and it is a float sum of values computed per tile (not of another
        column sum), over a tensor's rows, not along its contiguous last axis. Such a sum
        joins as partials per program, combined after (a norm backward's dw and db next to
        its dx)."""
        node = self.graph.nodes[gi]
        assert isinstance(node, Generic)
        if self.dot is not None or red & rows or any(
                self.produced.get(t, (-1,))[0] in self.columns for t in node.inputs):
            return False
        every = set().union(*(self._span(uf, g) for g in [*self.gens, gi]))
        kept = {uf.find((gi, i)) for i in real if i not in node.reduction_loops}
        if every != red | rows or not kept or not kept <= rows:
            return False
        for m in node.maps[:len(node.inputs)]:
            axes = [e for e in m if e is not None and e in real]
            if axes and axes[-1] in node.reduction_loops and \
                    any(e not in node.reduction_loops for e in axes):
                return False  # it sums along a tensor's contiguous axis: not a column sum
        by = {op.results[0]: op for op in node.body}
        accs = node.block_args[len(node.inputs):]
        return all(y in by and by[y].name == "arith.addf" and acc in by[y].operands
                   for y, acc in zip(node.yields, accs, strict=True))

    def _column_epilogue(self, uf: Classes, gi: int, real: set[int], rows: set) -> bool:
        """gi is elementwise over the kernel's columns only and computed from column sums
        (and tensors read from HBM): the combine kernel runs it once the sums are whole."""
        node = self.graph.nodes[gi]
        assert isinstance(node, Generic)
        return self.dot is None and {uf.find((gi, i)) for i in real} <= rows and all(
            t not in self.produced or self.produced[t][0] in self.columns for t in node.inputs)

    def _fits_dot(self, uf: Classes, gi: int, real: set[int], red: set) -> bool:
        """Once a contraction kernel has its dot, a generic joins only as epilogue: elementwise
        over the result's loops (batch, m, n) of one of its dots. Operand producers (prologue)
        were added before the dot, as producers recomputed per tile. An attention backward
        kernel takes its members first, then epilogues of its out dots."""
        if self.grad is not None and gi in self.grad.members:
            return True
        if red:
            return False
        dots = self.grad.outs if self.grad is not None else (self.dot,)
        loops = {uf.find((gi, i)) for i in real}
        return any(loops <= {uf.find((d.gi, x)) for x in (*d.batch, d.m, d.n)}
                   for d in dots if d is not None)

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
            kind = ROW_COLUMNS if self.columns else REDUCTION if reduced else POINTWISE
        locs = []
        for gi in self.gens:
            node = self.graph.nodes[gi]
            assert isinstance(node, Generic)
            locs.append(node.loc)
        return Kernel(index, kind, list(self.gens), reduced, sorted(set(ids.values())),
                      loop_class, class_global, locs=locs,
                      dot=self.dot if self.attn is None else None, attn=self.attn,
                      grad=self.grad, rows=self.rows, columns=list(self.columns))



def gen_of(graph: Graph, gi: int) -> Generic:
    node = graph.nodes[gi]
    assert isinstance(node, Generic)
    return node


