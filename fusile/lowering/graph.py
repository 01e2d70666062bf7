"""Reads a lowered func.func into a plain Python graph that backends walk.

This is the MLIR, not a second IR: one node per top-level op, generic ops with their indexing
maps, iterator types and region bodies as they stand. Values are numbered; a region may read
values defined outside it (scalar arguments, constants, sizes), by the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch_mlir import ir

from fusile.dsl.types import DTYPES, DType, i64

_CMPF = ["false", "oeq", "ogt", "oge", "olt", "ole", "one", "ord", "ueq", "ugt", "uge", "ult",
         "ule", "une", "uno", "true"]
_CMPI = ["eq", "ne", "slt", "sle", "sgt", "sge", "ult", "ule", "ugt", "uge"]


def dtype_of_mlir(t: ir.Type) -> DType:
    text = str(t)
    if text == "index":
        return i64
    return {"i1": DTYPES["bool"], "i32": DTYPES["i32"], "i64": DTYPES["i64"]}.get(
        text, DTYPES.get(text, DTYPES["f32"]))


@dataclass
class Op:
    """A scalar op: inside a region, or at function level (constants, sizes)."""

    name: str
    results: list[int]
    operands: list[int]
    dtype: DType  # of the (first) result
    attrs: dict[str, Any] = field(default_factory=dict)
    loc: str = ""


@dataclass
class TensorInfo:
    shape: tuple[int | None, ...]  # None for a dynamic dim
    dtype: DType


@dataclass
class Generic:
    results: list[int]
    inputs: list[int]
    outputs: list[int]  # the init tensors
    maps: list[tuple[int | None, ...]]  # per operand (inputs then outputs): loop index, or None=0
    n_loops: int
    iterators: list[str]
    block_args: list[int]
    body: list[Op]
    yields: list[int]
    loc: str

    @property
    def reduction_loops(self) -> list[int]:
        return [i for i, it in enumerate(self.iterators) if it == "reduction"]

    @property
    def defs(self) -> dict[int, Op]:
        """Each op of the region by the value it defines."""
        return {op.results[0]: op for op in self.body if op.results}

    def args_of(self, v: int) -> set[int]:
        """The block arguments region value v is computed from."""
        by = self.defs
        out: set[int] = set()
        stack, seen = [v], set()
        while stack:
            x = stack.pop()
            if x in seen:
                continue
            seen.add(x)
            if x in self.block_args:
                out.add(x)
            elif x in by:
                stack.extend(by[x].operands)
        return out


@dataclass
class Empty:
    result: int
    info: TensorInfo
    dyn: list[int]  # values giving the dynamic sizes, in order


@dataclass
class Graph:
    name: str
    args: list[int]
    arg_info: list[TensorInfo | DType]
    nodes: list[Generic | Empty | Op]
    results: list[int]
    tensors: dict[int, TensorInfo] = field(default_factory=dict)


def producers(graph: Graph) -> dict[int, int]:
    """Tensor id -> index of the generic that produces it."""
    return {r: gi for gi, n in enumerate(graph.nodes) if isinstance(n, Generic)
            for r in n.results}


def constants(graph: Graph) -> dict[int, Any]:
    """Value id -> value of each function-level arith.constant."""
    return {op.results[0]: op.attrs.get("value") for op in graph.nodes
            if isinstance(op, Op) and op.name == "arith.constant"}


def dim_sources(graph: Graph) -> dict[tuple[int, int], tuple[int, int]]:
    """(tensor, axis) -> (argument, axis) for each dynamic size of a tensor.empty that is a
    tensor.dim of a function argument: how to size a result no input is indexed alongside
    (`index(x, 1)` reads no tensor, only x's size)."""
    ops = {op.results[0]: op for op in graph.nodes if isinstance(op, Op)}
    consts = constants(graph)
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for node in graph.nodes:
        if not isinstance(node, Empty):
            continue
        dynamic = [axis for axis, s in enumerate(node.info.shape) if s is None]
        for axis, v in zip(dynamic, node.dyn, strict=True):
            op = ops.get(v)
            if op is not None and op.name == "tensor.dim" and op.operands[0] in graph.args:
                out[(node.result, axis)] = (op.operands[0], int(consts[op.operands[1]]))
    return out


class _Ids:
    def __init__(self) -> None:
        self.ids: dict[ir.Value, int] = {}

    def __call__(self, v: ir.Value) -> int:
        return self.ids.setdefault(v, len(self.ids))

    def fresh(self) -> int:
        """A number for a value the reader makes itself (no MLIR value has it)."""
        return self.ids.setdefault(object(), len(self.ids))


def _tensor_info(t: ir.Type) -> TensorInfo:
    rt = ir.RankedTensorType(t)
    dyn = ir.ShapedType.get_dynamic_size()
    return TensorInfo(tuple(None if s == dyn else s for s in rt.shape),
                      dtype_of_mlir(rt.element_type))


def _scalar_op(op: ir.Operation, ids: _Ids) -> Op:
    attrs: dict[str, Any] = {}
    name = op.name
    if name == "arith.constant":
        a = op.attributes["value"]
        attrs["value"] = a.value if isinstance(a, ir.FloatAttr) else (
            a.value if isinstance(a, ir.IntegerAttr) else ir.BoolAttr(a).value)
    elif name == "arith.cmpf":
        attrs["predicate"] = _CMPF[ir.IntegerAttr(op.attributes["predicate"]).value]
    elif name == "arith.cmpi":
        attrs["predicate"] = _CMPI[ir.IntegerAttr(op.attributes["predicate"]).value]
    elif name == "linalg.index":
        attrs["dim"] = ir.IntegerAttr(op.attributes["dim"]).value
    res = list(op.results)
    dtype = dtype_of_mlir(res[0].type) if res else i64
    return Op(name, [ids(r) for r in res], [ids(o) for o in op.operands], dtype, attrs,
              str(op.location))


def _maps(op: ir.Operation) -> tuple[list[tuple[int | None, ...]], int]:
    out: list[tuple[int | None, ...]] = []
    n = 0
    for attr in op.attributes["indexing_maps"]:
        am = ir.AffineMapAttr(attr).value
        n = am.n_dims
        exprs: list[int | None] = []
        for e in am.results:
            if isinstance(e, ir.AffineDimExpr):
                exprs.append(e.position)
            elif isinstance(e, ir.AffineConstantExpr) and e.value == 0:
                exprs.append(None)
            else:
                raise NotImplementedError(f"indexing map expression {e} is not supported")
        out.append(tuple(exprs))
    return out, n


def read_graph(module: ir.Module) -> Graph:
    """The graph of the module's (single) function."""
    ids = _Ids()
    fn = module.body.operations[0]
    entry = fn.regions[0].blocks[0]
    g = Graph(str(ir.StringAttr(fn.attributes["sym_name"]).value),
              [ids(a) for a in entry.arguments], [], [], [])
    for a in entry.arguments:
        if isinstance(a.type, ir.RankedTensorType):
            info = _tensor_info(a.type)
            g.arg_info.append(info)
            g.tensors[ids(a)] = info
        else:
            g.arg_info.append(dtype_of_mlir(a.type))
    for op_view in entry.operations:
        op = op_view.operation
        if op.name == "func.return":
            g.results = [ids(v) for v in op.operands]
        elif op.name == "tensor.empty":
            r = op.results[0]
            g.tensors[ids(r)] = info = _tensor_info(r.type)
            g.nodes.append(Empty(ids(r), info, [ids(v) for v in op.operands]))
        elif op.name == "linalg.generic":
            n_in = len(op_view.inputs)
            operands = [ids(v) for v in op.operands]
            maps, n_loops = _maps(op)
            block = op.regions[0].blocks[0]
            body = [_scalar_op(b.operation, ids) for b in block.operations]
            yields = body.pop().operands
            for r in op.results:
                g.tensors[ids(r)] = _tensor_info(r.type)
            iters = [str(a).split("<")[-1].rstrip(">") for a in op.attributes["iterator_types"]]
            args = [ids(a) for a in block.arguments]
            _add_not_subtract(body, yields, args[n_in:], ids)
            g.nodes.append(Generic([ids(r) for r in op.results], operands[:n_in],
                                   operands[n_in:], maps, n_loops, iters, args, body, yields,
                                   str(op.location)))
        elif op.name.startswith(("arith.", "math.", "tensor.dim")):
            g.nodes.append(_scalar_op(op, ids))
        else:
            raise NotImplementedError(f"op {op.name} is not supported by fusile's backends")
    return g


def reaccumulated(g: Graph) -> str:
    """A generic that reads an output's init while a parallel loop is missing from that
    output's map applies its update once per step of that loop: a value summed twice where
    upstream fusion put a parallel producer that reads its init into a wider consumer.
    Every backend would compute it differently (mlir-cpu sequentially, the Triton kernels as
    a reduction): a compiler bug, never a silent answer. '' where there is none."""
    for node in g.nodes:
        if not isinstance(node, Generic):
            continue
        n_in = len(node.inputs)
        read = {v for op in node.body for v in op.operands} | set(node.yields)
        for k, (m, acc) in enumerate(zip(node.maps[n_in:], node.block_args[n_in:],
                                         strict=True)):
            if acc in read and any(it == "parallel" and d not in m
                                   for d, it in enumerate(node.iterators)):
                return (f"output {k} of a linalg.generic ({node.loc}) reads its init but its "
                        f"map {m} leaves out a parallel loop")
    return ""


def _add_not_subtract(body: list[Op], yields: list[int], accs: list[int], ids: _Ids) -> None:
    """A sum of a negation, acc + (-x), reaches here as acc - x (canonicalize folds it): read
    it as acc + negf(x), so every reduction combines with its known combiner."""
    for y, acc in zip(yields, accs, strict=True):
        k = next((i for i, o in enumerate(body) if y in o.results), -1)
        op = body[k] if k >= 0 else None
        if op is None or op.name != "arith.subf" or op.operands[0] != acc:
            continue
        neg = Op("arith.negf", [ids.fresh()], [op.operands[1]], op.dtype, {}, op.loc)
        body[k:k + 1] = [neg, Op("arith.addf", op.results, [acc, neg.results[0]], op.dtype,
                                 {}, op.loc)]


def tensor_names(graph: Graph, param_names: list[str]) -> dict[int, str]:
    """Readable kernel argument names: parameters by name, results out0.., others t<id>."""
    names: dict[int, str] = {}
    for vid, name in zip(graph.args, param_names, strict=True):
        names[vid] = name
    for i, r in enumerate(graph.results):
        names.setdefault(r, f"out{i}")
    for t in graph.tensors:
        names.setdefault(t, f"t{t}")
    return names
