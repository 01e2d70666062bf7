"""Recognise a contraction whose result rows are reduced in the same kernel: `S = a @ b^T`,
elementwise functions T of S (scale, soft-capping, a bias, masks), and reductions of them
over S's columns n (max, sums: a log-sum-exp, the target's logit, a label-smoothing sum), where
S and T never reach HBM. `cross_entropy(h @ w.T, target)` is this: per row of tokens, the
vocabulary's log-sum-exp and the target logit, without the (tokens x vocab) logits.

After the MLIR passes the log-sum-exp is `mx = max_n T`, optionally `g = guard(mx)` (softmax's
shift for an infinite max, a generic of its own), and `l = sum_n exp(T - g)` with the shift
and exp fused into the sum's region. A kernel computes l in one pass over the columns (online
softmax: a running max and a rescaled sum), so the sum is not a second pass that recomputes S.
Every other reduction must read only S, its elementwise functions and tensors from HBM (one
level), and fold with a float add, max or min (what partials over column ranges combine).

The kernel (backends/triton/codegen_dot_rows.py) owns the contraction, the elementwise
functions, the reductions and the guards; what reads their per-row results (the loss) runs in
the kernels after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fusile.lowering import online as online_sum
from fusile.lowering.attention import is_guard, single
from fusile.lowering.contraction import DotForm, dot_form
from fusile.lowering.graph import Generic, Graph
from fusile.lowering.online import Online

if TYPE_CHECKING:  # groups.py holds this module's form in its kernels
    from fusile.lowering.groups import Classes

_FOLDS = ("arith.addf", "arith.maximumf", "arith.minimumf")


@dataclass(frozen=True)
class DotRowsForm:
    dot: DotForm  # S = a @ b^T: m = rows, n = the reduced columns, k = the contracted axis
    members: tuple[int, ...]  # every generic of the kernel, in program order
    mods: tuple[int, ...]  # elementwise generics over (m, n), from S
    folds: tuple[int, ...]  # reductions over n folded tile by tile (not the online ones)
    online: tuple[Online, ...]

    @property
    def guards(self) -> tuple[int, ...]:
        return tuple(o.guard for o in self.online if o.guard is not None)


def _gen(graph: Graph, gi: int | None) -> Generic | None:
    node = graph.nodes[gi] if gi is not None else None
    return node if isinstance(node, Generic) else None


def find(graph: Graph, s_gi: int, cls: Classes, ones: set[tuple]) -> DotRowsForm | None:
    """The rows-reduced contraction starting at contraction s_gi, or None."""
    node = _gen(graph, s_gi)
    form = dot_form(s_gi, node) if node is not None else None
    if form is None or node is None or any(
            cls.find(("loop", s_gi, x)) in ones for x in (form.m, form.n, form.k)):
        return None

    readers: dict[int, list[int]] = {}
    for gi, other in enumerate(graph.nodes):
        if isinstance(other, Generic):
            for t in other.inputs:
                readers.setdefault(t, []).append(gi)

    # tensors over (batch, m, n), never in HBM, with the storage dim of each of S's loops
    # (batch..., m, n): sizes alone cannot tell m from n (x @ x.mT) or from a batch axis
    out_map = node.maps[len(node.inputs)]
    full = {node.results[0]: tuple(out_map.index(x) for x in (*form.batch, form.m, form.n))}
    rows: dict[int, int] = {}  # per-row result -> its reduction or guard generic
    mods: list[int] = []
    folds: list[int] = []
    online: list[Online] = []
    seen: set[int] = {s_gi}
    for gi in range(s_gi + 1, len(graph.nodes)):  # program order: producers first
        n = _gen(graph, gi)
        if n is None or not (set(full) | set(rows)) & set(n.inputs):
            continue
        if not set(full) & set(n.inputs) and _guard_of(graph, gi, rows, folds) is None:
            continue  # reads only per-row results (the loss): runs after the kernel
        if not set(full) & set(n.inputs):  # a guard of a max
            seen.add(gi)
            rows[n.results[0]] = gi
            continue
        roles = _roles(n, full)
        if roles is None:
            return None
        if not n.reduction_loops:  # elementwise over the tile
            if any(u in rows for u in n.inputs):
                return None  # a tile of T shifted by a statistic (softmax): it would need T
            res = [x for x in n.maps[len(n.inputs)] if x is not None]
            if len(n.results) != 1 or len(res) != len(n.maps[len(n.inputs)]) or \
                    sorted(res) != sorted(roles):
                return None  # T's own axes, each once
            seen.add(gi)
            mods.append(gi)
            full[n.results[0]] = tuple(res.index(x) for x in roles)
            continue
        if n.reduction_loops != [roles[-1]]:
            return None  # it reduces over n, the columns, and nothing else
        if any(u in rows for u in n.inputs):  # reads a per-row result: the online sum
            o = online_sum.find(graph, gi, rows)
            if o is None or o.scores not in full or o.row_max not in folds or \
                    graph.tensors[n.results[0]].dtype.bits > 32:
                return None
            online.append(o)
        elif not _folds_floats(n):
            return None
        else:
            folds.append(gi)
        seen.add(gi)
        for r in n.results:
            rows[r] = gi
    for o in online:  # its max is the online pass's running max, not a fold of its own
        if o.row_max in folds:
            folds.remove(o.row_max)
    if not folds and not online:
        return None
    if set(full) & set(graph.results):
        return None
    for t in full:  # S and T stay on chip: only the kernel's generics read them
        if any(r not in seen for r in readers.get(t, [])):
            return None
    members = tuple(sorted(seen))
    return DotRowsForm(form, members, tuple(mods), tuple(folds), tuple(online))


def _roles(n: Generic, full: dict[int, tuple[int, ...]]) -> tuple[int, ...] | None:
    """The loops of generic n over S's (batch..., m, n), from the full tensors it reads
    (each read through its storage dims: they must agree), or None where they do not, or
    n has loops besides them."""
    roles = None
    for u, m in zip(n.inputs, n.maps[:len(n.inputs)], strict=True):
        if u in full:
            here = tuple(m[d] for d in full[u])
            if None in here or len(set(here)) != len(here) or roles not in (None, here):
                return None
            roles = here
    if roles is None or n.n_loops != len(roles):
        return None
    return roles  # type: ignore[return-value]


def _folds_floats(n: Generic) -> bool:
    """Each result folds with a float add, max or min of at most 32 bits (float32 partials
    combine them)."""
    by = n.defs
    accs = n.block_args[len(n.inputs):]
    for y, acc in zip(n.yields, accs, strict=True):
        op = by.get(y)
        if op is None or op.name not in _FOLDS or acc not in op.operands or \
                not op.dtype.is_float or op.dtype.bits > 32:
            return False
    return True


def _guard_of(graph: Graph, gi: int, rows: dict[int, int], folds: list[int]) -> int | None:
    """gi when it is guard(mx) of a max reduction mx of the chain, else None."""
    n = _gen(graph, gi)
    if n is None or not is_guard(n, graph):
        return None
    mx = rows.get(n.inputs[0])
    mx_n = _gen(graph, mx)
    return gi if mx in folds and mx_n is not None and single(mx_n, "arith.maximumf") else None
