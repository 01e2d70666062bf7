"""Host-side work of a call: the function-level scalar ops (constants, sizes, their
arithmetic) in plain Python, and whether a tensor's offsets fit int32."""

from __future__ import annotations

import math
from typing import Any

from fusile.backends.reference import scalar_op
from fusile.lowering.graph import Graph, Op

_HOST = {
    "arith.addi": lambda a, b: a + b, "arith.subi": lambda a, b: a - b,
    "arith.muli": lambda a, b: a * b, "arith.addf": lambda a, b: a + b,
    "arith.subf": lambda a, b: a - b, "arith.mulf": lambda a, b: a * b,
    "arith.divf": lambda a, b: a / b if b else math.copysign(math.inf, a) if a else math.nan,
}


def host_scalar(op: Op, env: dict[int, Any]) -> Any:
    """One scalar op, its operands in env."""
    name = op.name
    if name == "arith.constant":
        return op.attrs["value"]
    if name == "tensor.dim":
        return env[op.operands[0]].shape[env[op.operands[1]]]
    if name in ("arith.index_cast", "arith.extsi", "arith.trunci", "arith.extui"):
        return int(env[op.operands[0]])
    if name in ("arith.sitofp", "arith.uitofp", "arith.extf", "arith.truncf"):
        return float(env[op.operands[0]])
    if name in _HOST:
        return _HOST[name](env[op.operands[0]], env[op.operands[1]])
    v = scalar_op(op, env, None)
    return v.item() if hasattr(v, "item") else v


def host_env(graph: Graph, ops: list[Op], args: list[Any]) -> dict[int, Any]:
    """The call's arguments and every host scalar op's value, by value id."""
    env: dict[int, Any] = dict(zip(graph.args, args, strict=True))
    for op in ops:
        env[op.results[0]] = host_scalar(op, env)
    return env


def dynamic_values(graph: Graph, ops: list[Op], args: list[Any]) -> set[int]:
    """The value ids that depend on the call's non-tensor arguments: what can change between
    calls whose tensors have the same layout."""
    dyn = {a for a, v in zip(graph.args, args, strict=True) if not hasattr(v, "data_ptr")}
    for op in ops:
        if any(o in dyn for o in op.operands):
            dyn.add(op.results[0])
    return dyn


class CallScalars:
    """The host values a replayed call computes again: those that come from its non-tensor
    arguments (directly or through host arithmetic); the others are fixed by the layout and
    kept from the recorded call. `ok` is False where one of those depends on a tensor's
    data, which a replay cannot keep."""

    def __init__(self, graph: Graph, ops: list[Op], args: list[Any], env: dict[int, Any]):
        dyn = dynamic_values(graph, ops, args)
        self.args = [(vid, pos) for pos, vid in enumerate(graph.args) if vid in dyn]
        self.ops = [op for op in ops if op.results[0] in dyn]
        self.base = {o: env[o] for op in self.ops for o in op.operands if o not in dyn}
        self.ok = not any(hasattr(v, "data_ptr") for v in self.base.values())

    def __call__(self, args: list[Any]) -> dict[int, Any]:
        env = dict(self.base)
        for vid, pos in self.args:
            env[vid] = args[pos]
        for op in self.ops:
            env[op.results[0]] = host_scalar(op, env)
        return env


def extent(t: Any) -> int:
    """How many elements past its start an offset into t can reach."""
    if t.is_contiguous():
        return t.numel()
    return 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride(), strict=True))


def needs_i64(tensors: list[Any]) -> bool:
    """Whether an offset into one of the tensors can pass int32 (kernels then use int64)."""
    return any(extent(t) >= 2**31 - 1 for t in tensors)
