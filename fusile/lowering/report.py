"""What a plan does to memory, for people: kernels, the lines they fuse, HBM bytes moved.

`plan_report(plan, unfused_graph, arg_shapes)` sizes every tensor from the call's shapes (via
the dim classes) and counts each kernel's HBM reads and writes, against running every generic
of the unfused IR as its own kernel.
"""

from __future__ import annotations

import linecache
import math
import re
from dataclasses import dataclass, field
from typing import Any

from fusile.lowering.graph import Generic, Graph, dim_sources
from fusile.lowering.groups import Classes, Plan
from fusile.lowering.groups import loop_classes as _classes


def tensor_shapes(graph: Graph, cls: Classes, arg_shapes: dict[int, tuple[int, ...]]
                  ) -> dict[int, tuple[int, ...]]:
    """Concrete shapes of every tensor in `graph` given the argument shapes."""
    size: dict[tuple, int] = {}
    for a, shape in arg_shapes.items():
        for axis, s in enumerate(shape):
            size.setdefault(cls.find(("dim", a, axis)), s)
    for (t, axis), (a, a_axis) in dim_sources(graph).items():
        if a in arg_shapes:
            size.setdefault(cls.find(("dim", t, axis)), arg_shapes[a][a_axis])
    out = {}
    for t, info in graph.tensors.items():
        out[t] = tuple(s if s is not None else size[cls.find(("dim", t, k))]
                       for k, s in enumerate(info.shape))
    return out


def _nbytes(graph: Graph, shapes: dict[int, tuple[int, ...]], t: int) -> int:
    info = graph.tensors[t]
    return math.prod(shapes[t]) * max(1, info.dtype.bits // 8)


def _source_line(loc: str) -> tuple[str, str]:
    m = re.search(r'loc\("([^"]*)":(\d+):\d+\)', loc)
    if not m:
        return "", ""
    where = f"{m.group(1).rsplit('/', 1)[-1]}:{m.group(2)}"
    return where, linecache.getline(m.group(1), int(m.group(2))).strip()


# What counts as one floating-point operation: each float arithmetic, comparison or math op
# in a region, once per point of its loop space (a multiply-add is 2; exp, erf, rsqrt are 1
# each). Casts, selects and integer index math are free.
FLOP_OPS = {"arith.addf", "arith.subf", "arith.mulf", "arith.divf", "arith.maximumf",
            "arith.minimumf", "arith.cmpf", "arith.negf"}


def generic_flops(node: Generic, loop_extents: list[int]) -> int:
    per_point = sum(1 for op in node.body
                    if op.name in FLOP_OPS or op.name.startswith("math."))
    return per_point * math.prod(loop_extents)


def loop_extents(graph: Graph, gi: int, shapes: dict[int, tuple[int, ...]]) -> list[int]:
    node = graph.nodes[gi]
    assert isinstance(node, Generic)
    ext = [1] * node.n_loops
    for t, m in zip([*node.inputs, *node.outputs], node.maps, strict=True):
        if t not in shapes:
            continue
        for axis, e in enumerate(m):
            if e is not None:
                ext[e] = max(ext[e], shapes[t][axis])
    return ext


@dataclass
class KernelReport:
    index: int
    kind: str
    ops: int
    lines: list[tuple[str, str]]
    reads: dict[str, int]  # tensor name -> bytes
    writes: dict[str, int]
    flops: int = 0
    dots: bool = False  # its products run as tile dots (tensor cores), not elementwise

    @property
    def bytes(self) -> int:
        return sum(self.reads.values()) + sum(self.writes.values())


@dataclass
class PlanReport:
    kernels: list[KernelReport]
    unfused_kernels: int
    unfused_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(k.bytes for k in self.kernels)

    def to_dict(self) -> dict[str, Any]:
        return {"kernels": [vars(k) | {"bytes": k.bytes} for k in self.kernels],
                "bytes": self.bytes, "unfused_kernels": self.unfused_kernels,
                "unfused_bytes": self.unfused_bytes}

    def __str__(self) -> str:
        out = []
        for k in self.kernels:
            reads = ", ".join(f"{n} {fmt_bytes(b)}" for n, b in k.reads.items())
            writes = ", ".join(f"{n} {fmt_bytes(b)}" for n, b in k.writes.items())
            out.append(f"kernel {k.index} ({k.kind}, {k.ops} fused linalg ops): "
                       f"reads {reads or '-'}; writes {writes or '-'}; {fmt_bytes(k.bytes)} HBM")
            for where, text in k.lines:
                out.append(f"    {where:<24} {text}")
        out.append(f"total: {len(self.kernels)} kernel(s), {fmt_bytes(self.bytes)} through HBM; "
                   f"unfused: {self.unfused_kernels} kernels, {fmt_bytes(self.unfused_bytes)}")
        return "\n".join(out)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _kernel_lines(graph: Graph, k: Any) -> list[tuple[str, str]]:
    """The user's lines a kernel fuses, (file:line, text), in file order."""
    lines: list[tuple[str, str]] = []
    for gi in k.generics:
        node = graph.nodes[gi]
        assert isinstance(node, Generic)
        for op_loc in [node.loc, *[op.loc for op in node.body]]:
            item = _source_line(op_loc)
            if item[0] and item not in lines and not item[1].startswith("def "):
                lines.append(item)
    lines.sort(key=lambda x: (x[0].rsplit(":", 1)[0], int(x[0].rsplit(":", 1)[1])))
    return lines


def plan_outline(plan: Plan, names: dict[int, str]) -> str:
    """A plan without sizes (FUSILE_DEBUG=plan): each kernel's kind, the tensors it reads and
    writes, and the user's lines it fuses."""
    out = []
    for k in plan.kernels:
        out.append(f"kernel {k.index} ({k.kind}): reads {', '.join(names[t] for t in k.reads)}"
                   f"; writes {', '.join(names[t] for t in k.writes)}")
        out.extend(f"    {where:<24} {text}" for where, text in _kernel_lines(plan.graph, k))
    return "\n".join(out)


def plan_report(plan: Plan, unfused: Graph, arg_shapes: list[tuple[int, ...] | None],
                names: dict[int, str]) -> PlanReport:
    graph = plan.graph
    shapes = tensor_shapes(graph, plan.classes, {a: s for a, s in zip(graph.args, arg_shapes,
                                                                       strict=True) if s})
    kernels = []
    for k in plan.kernels:
        lines = _kernel_lines(graph, k)
        flops = 0
        for gi in k.generics:
            node = graph.nodes[gi]
            assert isinstance(node, Generic)
            flops += generic_flops(node, loop_extents(graph, gi, shapes))
        kernels.append(KernelReport(
            k.index, k.kind, len(k.generics), lines,
            {names[t]: _nbytes(graph, shapes, t) for t in k.reads},
            {names[t]: _nbytes(graph, shapes, t) for t in k.writes}, flops,
            k.tile_dots))
    # every generic of the unfused IR as its own kernel
    u_plan = partition_each(unfused)
    u_shapes = tensor_shapes(unfused, u_plan, {a: s for a, s in zip(unfused.args, arg_shapes,
                                                                     strict=True) if s})
    u_kernels, u_bytes = 0, 0
    for node in unfused.nodes:
        if not isinstance(node, Generic) or (not node.inputs and not node.body):
            continue
        u_kernels += 1
        tensors = {t for t in node.inputs if t in unfused.tensors} | set(node.results)
        u_bytes += sum(_nbytes(unfused, u_shapes, t) for t in tensors)
    report = PlanReport(kernels, u_kernels, u_bytes)
    report.extra["unfused_flops"] = sum(
        generic_flops(n, loop_extents(unfused, i, u_shapes)) for i, n in enumerate(unfused.nodes)
        if isinstance(n, Generic) and (n.inputs or n.body))
    return report


def partition_each(graph: Graph) -> Classes:
    return _classes(graph)
