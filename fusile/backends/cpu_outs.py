"""mlir-cpu results written straight into the caller's tensors (destination passing).

A result that a linalg.generic computes into a `tensor.empty` (directly, or through a fill of
it, as a reduction's init) gets a trailing function argument to start from instead.
One-shot bufferization then writes the result in that argument's buffer, which the caller
allocated as a torch tensor: no buffer malloc'd by the JIT's code, no copy back, no free.
The rest (a result that is an argument, a reshape of a value, a value returned twice) still
comes back in a buffer the function allocated.

The caller must size each such argument before the call: `result_dims` says where each of a
result's extents comes from (a static size, or an argument's axis in the same size class);
a result with an extent it cannot place keeps the old way.
"""

from __future__ import annotations

from typing import Any

from fusile.lowering.graph import Graph, dim_sources
from fusile.lowering.groups import loop_classes

Dims = list[int | tuple[int, int]]  # per axis: a static extent, or (argument position, axis)


def result_dims(graph: Graph) -> list[Dims | None]:
    """Per result, where each extent comes from, or None where one has no known source."""
    cls = loop_classes(graph)
    where: dict[tuple, tuple[int, int]] = {}
    for pos, a in enumerate(graph.args):
        for axis in range(len(graph.tensors[a].shape) if a in graph.tensors else 0):
            where.setdefault(cls.find(("dim", a, axis)), (pos, axis))
    for (t, axis), (a, a_axis) in dim_sources(graph).items():
        where.setdefault(cls.find(("dim", t, axis)), (graph.args.index(a), a_axis))
    out: list[Dims | None] = []
    for r in graph.results:
        info = graph.tensors.get(r)
        if info is None:
            out.append(None)
            continue
        dims: Dims = []
        for axis, s in enumerate(info.shape):
            src = s if s is not None else where.get(cls.find(("dim", r, axis)))
            if src is None:
                break
            dims.append(src)
        out.append(dims if len(dims) == len(info.shape) else None)
    return out


def destination_results(module: Any, allowed: list[bool]) -> list[bool]:
    """Give each allowed result of the module's function that is computed into a fresh
    tensor.empty a trailing argument of its own to be computed into; per result, whether it
    got one. The function's type is updated to match."""
    from torch_mlir import ir

    func = next(op for op in module.body.operations if op.operation.name == "func.func")
    block = func.regions[0].blocks[0]
    ret = list(block.operations)[-1]
    done = [False] * len(allowed)
    with module.context, ir.Location.unknown():
        slots = [_fresh_init(v) if ok else None for v, ok in
                 zip(ret.operands, allowed, strict=True)]
        owners = [s[0].operands[s[1]].owner for s in slots if s is not None]
        for k, slot in enumerate(slots):
            if slot is None:
                continue
            op, i = slot
            empty = op.operands[i].owner
            if not hasattr(empty, "name"):
                continue  # a value returned twice: its first return took the empty
            arg = block.add_argument(op.operands[i].type, ir.Location.unknown())
            if sum(o == empty for o in owners) == 1:
                # every user of that empty starts from the argument: bufferization keeps the
                # buffer sharing it chose for them (softmax's exp(x - max) and its result in
                # one buffer; given one each, it took 1.7x as long)
                empty.result.replace_all_uses_with(arg)
            else:  # an empty two results start from (add_rms_norm's y and h): theirs only
                op.operands[i] = arg
            if not list(empty.result.uses):
                empty.operation.erase()
            done[k] = True
        results = [v.type for v in ret.operands]
        func.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get(
            [a.type for a in block.arguments], results))
    return done


def _fresh_init(v: Any) -> tuple[Any, int] | None:
    """(op, operand index) where a returned value's computation starts from a tensor.empty:
    its generic's init, or a fill's of it that only that generic reads; else None."""
    op = v.owner
    if not hasattr(op, "name") or op.name != "linalg.generic":
        return None
    i = int(op.attributes["operandSegmentSizes"][0]) + v.result_number
    while True:
        init = op.operands[i]
        owner = init.owner
        if not hasattr(owner, "name"):
            return None
        if owner.name == "tensor.empty":
            return op, i
        if owner.name != "linalg.generic" or len(list(init.uses)) != 1 or \
                int(owner.attributes["operandSegmentSizes"][0]) != 0:
            return None  # only a fill (a generic with no inputs) passes its init on
        op, i = owner, init.result_number
