"""The oracle: evaluates a lowered MLIR function with numpy in float64.

Every float is float64 here, integers are int64; a rounding cast (truncf, as in astype(x, bf16)
or a 16-bit result) rounds to its dtype as the target does, and the value stays float64.
A generic is evaluated vectorised over its loop space; a reduction whose region ends in a known
combiner is reduced with numpy, anything else falls back to stepping the reduction loops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fusile.dsl.types import DType
from fusile.lowering.graph import Empty, Generic, Graph, Op

Array = np.ndarray


def _erf(x: Any) -> Any:
    import torch

    return torch.special.erf(torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()


_UNARY: dict[str, Callable[[Any], Any]] = {
    "math.exp": np.exp, "math.exp2": np.exp2, "math.log": np.log, "math.log2": np.log2,
    "math.sqrt": np.sqrt, "math.rsqrt": lambda x: 1.0 / np.sqrt(x), "math.tanh": np.tanh,
    "math.erf": _erf, "math.sin": np.sin, "math.cos": np.cos, "math.log1p": np.log1p,
    "math.expm1": np.expm1,
    "math.floor": np.floor, "math.ceil": np.ceil, "math.absf": np.abs, "math.absi": np.abs,
    "arith.negf": np.negative,
    "arith.extf": lambda x: x,
    "arith.sitofp": lambda x: np.asarray(x, dtype=np.float64),
    "arith.uitofp": lambda x: np.asarray(x, dtype=np.float64),
    "arith.fptosi": lambda x: np.trunc(x).astype(np.int64),
    "arith.extsi": lambda x: np.asarray(x, dtype=np.int64),
    "arith.extui": lambda x: np.asarray(x, dtype=np.int64),
    "arith.trunci": lambda x: np.asarray(x, dtype=np.int64),
    "arith.index_cast": lambda x: np.asarray(x, dtype=np.int64),
}
_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "arith.addf": np.add, "arith.addi": np.add, "arith.subf": np.subtract,
    "arith.subi": np.subtract, "arith.mulf": np.multiply, "arith.muli": np.multiply,
    "arith.divf": np.divide, "arith.floordivsi": np.floor_divide,
    "arith.maximumf": np.maximum, "arith.minimumf": np.minimum, "arith.maxsi": np.maximum,
    "arith.minsi": np.minimum, "arith.andi": np.bitwise_and, "arith.ori": np.bitwise_or,
    "arith.xori": np.bitwise_xor, "math.powf": np.power,
}
_CMP = {"oeq": np.equal, "une": np.not_equal, "olt": np.less, "ole": np.less_equal,
        "ogt": np.greater, "oge": np.greater_equal, "eq": np.equal, "ne": np.not_equal,
        "slt": np.less, "sle": np.less_equal, "sgt": np.greater, "sge": np.greater_equal,
        "ult": np.less, "ule": np.less_equal, "ugt": np.greater, "uge": np.greater_equal}
# combiner op -> (numpy reduction, identity-free combine with the init)
_REDUCERS: dict[str, Callable[..., Any]] = {
    "arith.addf": np.sum, "arith.addi": np.sum, "arith.maximumf": np.max,
    "arith.minimumf": np.min, "arith.maxsi": np.max, "arith.minsi": np.min,
    "arith.ori": np.any, "arith.andi": np.all,
}


def _round(x: Any, d: DType) -> Any:
    """x rounded to float dtype d (nearest even), as float64."""
    if d.name == "bf16":
        import torch

        t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        return t.to(torch.bfloat16).to(torch.float64).numpy()
    narrow = {"f16": np.float16, "f32": np.float32}.get(d.name)
    return x if narrow is None else np.asarray(x).astype(narrow).astype(np.float64)


def scalar_op(op: Op, env: dict[int, Any], loop_index: Callable[[int], Array] | None) -> Any:
    args = [env[o] for o in op.operands]
    if op.name == "arith.constant":
        v = op.attrs["value"]
        return np.float64(v) if op.dtype.is_float else (np.bool_(v) if op.dtype.kind == "b"
                                                       else np.int64(v))
    if op.name == "tensor.dim":
        return np.int64(args[0].shape[int(args[1])])
    if op.name == "linalg.index":
        assert loop_index is not None
        return loop_index(op.attrs["dim"])
    if op.name == "arith.truncf":  # round as the target does (values stay float64)
        return _round(args[0], op.dtype)
    if op.name in _UNARY:
        return _UNARY[op.name](args[0])
    if op.name in _BINARY:
        return _BINARY[op.name](args[0], args[1])
    if op.name in ("arith.cmpf", "arith.cmpi"):
        return _CMP[op.attrs["predicate"]](args[0], args[1])
    if op.name == "arith.select":
        return np.where(args[0], args[1], args[2])
    raise NotImplementedError(f"reference backend: op {op.name}")


def _to_loops(a: Array, m: tuple[int | None, ...], n_loops: int) -> Array:
    """View an operand in loop space: axes ordered by loop, size-1 where the loop is absent."""
    a = np.asarray(a)
    index = tuple(0 if e is None else slice(None) for e in m)
    a = a[index]
    loops = [e for e in m if e is not None]
    order = np.argsort(loops)
    a = np.transpose(a, order) if len(loops) > 1 else a
    shape = [1] * n_loops
    for pos, loop in enumerate(sorted(loops)):
        shape[loop] = a.shape[pos]
    return a.reshape(shape)


def _from_loops(v: Array, m: tuple[int | None, ...], loop_shape: list[int]) -> Array:
    """Loop space -> an output's storage layout (output maps are projected permutations)."""
    loops = [e for e in m if e is not None]
    v = np.broadcast_to(v, [s if i in loops else 1 for i, s in enumerate(loop_shape)])
    v = v.reshape([s for i, s in enumerate(loop_shape) if i in loops])
    kept_sorted = sorted(loops)
    return np.transpose(v, [kept_sorted.index(e) for e in loops]) if len(loops) > 1 else v


def _loop_extents(node: Generic, env: dict[int, Any]) -> list[int]:
    extents = [1] * node.n_loops
    for operand, m in zip([*node.inputs, *node.outputs], node.maps, strict=True):
        shape = np.shape(env[operand])
        for axis, e in enumerate(m):
            if e is not None:
                # a size-1 operand broadcasts; an empty one (0) sets the extent as any does
                extents[e] = shape[axis] if extents[e] == 1 else extents[e]
    return extents


def _eval_body(node: Generic, env: dict[int, Any], args: list[Any],
               loop_shape: list[int]) -> list[Any]:
    local = dict(env)
    for bid, a in zip(node.block_args, args, strict=True):
        local[bid] = a

    def loop_index(d: int) -> Array:
        shape = [1] * node.n_loops
        shape[d] = loop_shape[d]
        return np.arange(loop_shape[d], dtype=np.int64).reshape(shape)

    for op in node.body:
        local[op.results[0]] = scalar_op(op, local, loop_index)
    return [local[y] for y in node.yields]


def _eval_generic(node: Generic, env: dict[int, Any]) -> list[Array]:
    ext = _loop_extents(node, env)
    n_in = len(node.inputs)
    ins = [_to_loops(env[v], m, node.n_loops) if np.ndim(env[v]) else env[v]
           for v, m in zip(node.inputs, node.maps[:n_in], strict=True)]
    out_maps = node.maps[n_in:]
    inits = [_to_loops(env[v], m, node.n_loops) for v, m in zip(node.outputs, out_maps,
                                                                strict=True)]
    red = node.reduction_loops
    if not red:
        ys = _eval_body(node, env, [*ins, *inits], ext)
        return [_from_loops(np.asarray(y, dtype=np.asarray(i).dtype) if np.ndim(y) == 0 else y,
                            m, ext) for y, m, i in zip(ys, out_maps, inits, strict=True)]
    fast = _reduce_fast(node, env, ins, inits, ext)
    if fast is not None:
        return [_from_loops(r, m, ext) for r, m in zip(fast, out_maps, strict=True)]
    return [_from_loops(r, m, ext) for r, m in zip(_reduce_steps(node, env, ins, inits, ext),
                                                    out_maps, strict=True)]


def _reduce_fast(node: Generic, env: dict[int, Any], ins: list[Any], inits: list[Array],
                 ext: list[int]) -> list[Array] | None:
    """Each yield is combine(f, acc) with f free of the accumulators: reduce f with numpy."""
    n_in = len(node.inputs)
    accs = node.block_args[n_in:]
    by_result = {op.results[0]: op for op in node.body}
    plan = []
    for y, acc in zip(node.yields, accs, strict=True):
        op = by_result.get(y)
        if op is None or op.name not in _REDUCERS or acc not in op.operands:
            return None
        other = op.operands[1] if op.operands[0] == acc else op.operands[0]
        if other == acc or _depends_on(other, set(accs), by_result):
            return None
        plan.append((op, other))
    red = tuple(node.reduction_loops)
    if any(ext[d] == 0 for d in red):  # nothing to combine: each result is its init
        return list(inits)            # (numpy's max of an empty axis raises)
    local = dict(env)
    for bid, a in zip(node.block_args, [*ins, *inits], strict=True):
        local[bid] = a
    outs = []
    for (op, other), init in zip(plan, inits, strict=True):
        contracted = _einsum(node, other, by_result, local, ext) if op.name == "arith.addf" \
            else None
        if contracted is None:
            val = _eval_value(other, by_result, local, node, ext)
            val = np.broadcast_to(val, ext)
            contracted = _REDUCERS[op.name](val, axis=red, keepdims=True)
        outs.append(_BINARY[op.name](init, contracted) if op.name in _BINARY else
                    (init | contracted if op.name == "arith.ori" else init & contracted))
    return outs


def _einsum(node: Generic, v: int, by_result: dict[int, Op], local: dict[int, Any],
            ext: list[int]) -> Array | None:
    """sum(a * b) over the reduction loops via einsum, when a and b are (cast) block args."""
    op = by_result.get(v)
    if op is None or op.name != "arith.mulf":
        return None
    factors = []
    for o in op.operands:
        while o in by_result and by_result[o].name in ("arith.extf", "arith.sitofp"):
            o = by_result[o].operands[0]
        if o not in node.block_args[: len(node.inputs)]:
            return None
        factors.append(np.asarray(local[o], dtype=np.float64))
    letters = "abcdefghijklmnopqrstuvwxyz"
    subs = []
    arrays = []
    for f in factors:
        keep = [i for i in range(node.n_loops) if f.shape[i] != 1 or ext[i] == 1]
        arrays.append(f.reshape([f.shape[i] for i in keep]))
        subs.append("".join(letters[i] for i in keep))
    out = "".join(letters[i] for i in range(node.n_loops))
    red = node.reduction_loops
    out_sub = "".join(c for i, c in enumerate(out) if i not in red)
    res = np.einsum(f"{subs[0]},{subs[1]}->{out_sub}", *arrays)
    shape = [1 if i in red else ext[i] for i in range(node.n_loops)]
    return np.broadcast_to(res.reshape([ext[i] for i in range(node.n_loops) if i not in red]),
                           [ext[i] for i in range(node.n_loops) if i not in red]).reshape(shape)


def _depends_on(v: int, targets: set[int], by_result: dict[int, Op]) -> bool:
    stack, seen = [v], set()
    while stack:
        x = stack.pop()
        if x in targets:
            return True
        if x in seen or x not in by_result:
            continue
        seen.add(x)
        stack.extend(by_result[x].operands)
    return False


def _eval_value(v: int, by_result: dict[int, Op], local: dict[int, Any], node: Generic,
                ext: list[int]) -> Any:
    if v in local:
        return local[v]
    op = by_result[v]
    for o in op.operands:
        _eval_value(o, by_result, local, node, ext)

    def loop_index(d: int) -> Array:
        shape = [1] * node.n_loops
        shape[d] = ext[d]
        return np.arange(ext[d], dtype=np.int64).reshape(shape)

    local[v] = scalar_op(op, local, loop_index)
    return local[v]


def _reduce_steps(node: Generic, env: dict[int, Any], ins: list[Any], inits: list[Array],
                  ext: list[int]) -> list[Array]:
    """Fallback: step through the reduction loops, vectorised over the parallel ones."""
    red = node.reduction_loops
    accs = [np.array(np.broadcast_to(i, [1 if d in red else ext[d] for d in range(len(ext))]))
            for i in inits]
    for point in np.ndindex(*[ext[d] for d in red]):
        def at(a: Any, point: tuple[int, ...] = point) -> Any:
            if np.ndim(a) == 0:
                return a
            idx = [slice(None)] * len(ext)
            for d, p in zip(red, point, strict=True):
                idx[d] = slice(p, p + 1) if a.shape[d] != 1 else slice(0, 1)
            return a[tuple(idx)]

        local_ext = [1 if d in red else e for d, e in enumerate(ext)]
        args = [at(a) for a in ins] + accs
        ys = _eval_body_at(node, env, args, local_ext, dict(zip(red, point, strict=True)))
        accs = [np.array(np.broadcast_to(y, a.shape)) for y, a in zip(ys, accs, strict=True)]
    return accs


def _eval_body_at(node: Generic, env: dict[int, Any], args: list[Any], ext: list[int],
                  fixed: dict[int, int]) -> list[Any]:
    local = dict(env)
    for bid, a in zip(node.block_args, args, strict=True):
        local[bid] = a

    def loop_index(d: int) -> Array:
        if d in fixed:
            return np.array(fixed[d], dtype=np.int64)
        shape = [1] * node.n_loops
        shape[d] = ext[d]
        return np.arange(ext[d], dtype=np.int64).reshape(shape)

    for op in node.body:
        local[op.results[0]] = scalar_op(op, local, loop_index)
    return [local[y] for y in node.yields]


def _as_reference(a: Any) -> Any:
    a = np.asarray(a)
    if a.dtype.kind == "f":
        return a.astype(np.float64)
    if a.dtype.kind in "iu":
        return a.astype(np.int64)
    return a


def evaluate(graph: Graph, args: list[Any]) -> list[Array]:
    """Run the graph on numpy arrays / Python scalars; returns float64/int64/bool arrays."""
    env: dict[int, Any] = {}
    for vid, a in zip(graph.args, args, strict=True):
        env[vid] = _as_reference(a)
    with np.errstate(all="ignore"):
        for node in graph.nodes:
            if isinstance(node, Op):
                env[node.results[0]] = scalar_op(node, env, None)
            elif isinstance(node, Empty):
                shape, dyn = [], iter(node.dyn)
                for s in node.info.shape:
                    shape.append(int(env[next(dyn)]) if s is None else s)
                kind = node.info.dtype.kind
                env[node.result] = np.zeros(shape, dtype={"f": np.float64, "i": np.int64,
                                                          "b": np.bool_}[kind])
            else:
                for r, v in zip(node.results, _eval_generic(node, env), strict=True):
                    env[r] = np.array(v)
    return [env[r] for r in graph.results]
