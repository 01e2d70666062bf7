"""Fused graph -> the axis along which a program can run as independent blocks of rows.

A program is row-separable along a size class C (lowering/groups.py's union-find over loops and
tensor axes) when rows [a, b) of every result along C are computed from rows [a, b) of the
arguments that have a C axis and from the whole of those that do not. It holds when:
  - every generic with a loop in C has exactly one, a parallel one, whose index its body does
    not read (`index(x, 0)` would see the block's own numbering);
  - no tensor has two axes in C, and every C extent is dynamic (a static one would not match
    a block's size);
  - a size of a C axis is read only to size a tensor.empty, never as a value in the math
    (`sum(x, axis=-1) / size(x, 0)`);
  - every result has a C axis (a result without one would be a reduction over the rows).
A backend that holds the plan may then run blocks in parallel, each small enough to stay in
cache between the program's passes over it (backends/mlir_cpu.py does both).
"""

from __future__ import annotations

from dataclasses import dataclass

from fusile.lowering.graph import Empty, Generic, Graph, Op, constants
from fusile.lowering.groups import Classes, loop_classes


@dataclass(frozen=True)
class RowSplit:
    args: tuple[int | None, ...]  # per function argument: the axis it is split along, or None
    results: tuple[int, ...]  # per result: the axis its blocks are placed along


class _NotSeparable(Exception):
    pass


def row_split(graph: Graph) -> RowSplit | None:
    """The first axis of the first result along which the program is row-separable, if any."""
    if not graph.results or graph.results[0] not in graph.tensors:
        return None
    cls = loop_classes(graph)
    first = graph.results[0]
    for axis in range(len(graph.tensors[first].shape)):
        try:
            return _split_along(graph, cls, cls.find(("dim", first, axis)))
        except _NotSeparable:
            continue
    return None


def _split_along(graph: Graph, cls: Classes, c: tuple) -> RowSplit:
    def axis_of(t: int) -> int | None:
        info = graph.tensors.get(t)
        if info is None:
            return None
        axes = [a for a in range(len(info.shape)) if cls.find(("dim", t, a)) == c]
        if len(axes) > 1 or any(info.shape[a] is not None for a in axes):
            raise _NotSeparable
        return axes[0] if axes else None

    for t in graph.tensors:
        axis_of(t)
    sizing = _c_sizes(graph, cls, c)
    for gi, node in enumerate(graph.nodes):
        if isinstance(node, Generic):
            _check_generic(graph, cls, c, gi, node, sizing)
        elif isinstance(node, Op) and set(node.operands) & sizing:
            raise _NotSeparable  # a C size computed with: it may reach the math
        elif isinstance(node, Empty):
            for axis, v in zip([a for a, s in enumerate(node.info.shape) if s is None],
                               node.dyn, strict=True):
                if cls.find(("dim", node.result, axis)) == c and v not in sizing:
                    raise _NotSeparable  # sized from something other than a C axis
    results = tuple(axis_of(r) for r in graph.results)
    args = tuple(axis_of(a) for a in graph.args)
    if any(a is None for a in results) or all(a is None for a in args):
        raise _NotSeparable
    return RowSplit(args, tuple(a for a in results if a is not None))


def _c_sizes(graph: Graph, cls: Classes, c: tuple) -> set[int]:
    """The values that are a tensor.dim of a C axis."""
    consts = constants(graph)
    out: set[int] = set()
    for node in graph.nodes:
        if isinstance(node, Op) and node.name == "tensor.dim":
            t, axis = node.operands[0], consts.get(node.operands[1])
            if axis is None or cls.find(("dim", t, int(axis))) == c:
                out.update(node.results)
    return out


def _check_generic(graph: Graph, cls: Classes, c: tuple, gi: int, node: Generic,
                   sizing: set[int]) -> None:
    loops = [i for i in range(node.n_loops) if cls.find(("loop", gi, i)) == c]
    if len(loops) > 1 or (loops and node.iterators[loops[0]] != "parallel"):
        raise _NotSeparable
    for op in node.body:
        if set(op.operands) & sizing:
            raise _NotSeparable
        if loops and op.name == "linalg.index" and op.attrs.get("dim") == loops[0]:
            raise _NotSeparable
    for t, m in zip([*node.inputs, *node.outputs], node.maps, strict=True):
        if loops and loops[0] in m and t not in graph.tensors:
            raise _NotSeparable  # a tensor the split does not know the rows of
        if any(e is None and cls.find(("dim", t, a)) == c for a, e in enumerate(m)):
            raise _NotSeparable  # one fixed row of a C axis: not the block's own
