"""The emitter every kernel writer builds on: a plan kernel's values as Triton tiles.

Tiles are 2-D. The current frame (set_frame) says which index class runs along each tile
axis ("p", rows; "r", columns), the block size of each axis and the mask of each combination;
a value's tile shape follows from the classes it depends on, so a row statistic is
[BLOCK_P, 1] and broadcasts back over the row for free. tensor_value loads or computes a
tensor's tile in the frame, emit_generic emits a generic's region (reductions included), and
store writes a tile back. Each line carries the user's file:line from the MLIR location.
The writers (codegen.py rows, codegen_dot.py, codegen_attn.py, codegen_grad.py) each set their
classes and frames and write their kernels over it; what the tiled ones share is composed in
(codegen_tiled.py, codegen_bounds.py), not inherited.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fusile.backends.triton.kernel_source import TensorArg, short_loc
from fusile.backends.triton.ops import (
    NAN_COMBINE,
    REDUCE,
    RULES,
    int_identity,
    literal,
)
from fusile.backends.triton.scope import Scope
from fusile.dsl.errors import BackendError
from fusile.dsl.types import f64
from fusile.lowering.graph import Generic, Graph, Op
from fusile.lowering.partition import Kernel, Plan

# a header's place for the scalar parameters: the body names them as it reads them
SCALARS = "<scalars>"


def mask(var: str, bound: str | None, shape: str, even: str | None = None) -> str:
    """The line `mask_<var> = ...` of index tile `var` (tile shape `shape`): `var < bound`;
    constant true where `bound` is None (a whole block); with `even`, a constexpr the launch
    sets, constant true wherever it holds, so the compares fold out of the loads."""
    full = f"tl.full({shape}, 1, tl.int1)"
    if bound is None:
        return f"mask_{var} = {full}"
    if even is None:
        return f"mask_{var} = {var} < {bound}"
    return f"mask_{var} = {full} if {even} else {var} < {bound}"


class TileEmitter:
    # set by each writer's _order_classes (and set_frame)
    classes: list[int]
    p_classes: list[int]
    r_classes: list[int]
    cname: dict[int, str]
    idx: dict[int, str]
    axis_of: dict[int, str]
    blocks: tuple[str, str]
    masks: dict[frozenset[str], str | None]
    batch: list[int]  # tiled kernels: the batch classes, indexed by bidx
    bidx: dict[int, str]

    def __init__(self, plan: Plan, kernel: Kernel, target: str, names: dict[int, str]):
        self.plan, self.k, self.target = plan, kernel, target
        self.g: Graph = plan.graph
        self.names = names
        self.producer: dict[int, int] = {}
        for gi in kernel.generics:
            node = self.gen(gi)
            for r in node.results:
                self.producer[r] = gi
        self.func_ops: dict[int, Op] = {op.results[0]: op for op in self.g.nodes
                                        if isinstance(op, Op)}
        self.scalars: list[int] = []
        self.batch, self.bidx = [], {}
        self.unmasked: set[int] = set()  # select results whose condition holds on this tile
        self.factor: dict[int, str | None] = {}  # mulf results to scale by a factor, or not
        # what the row kernel stores; a rows+columns kernel's combine stores the rest
        self.writes = [t for t in kernel.writes if self.producer.get(t) not in kernel.columns]
        self._order_classes()

    def _order_classes(self) -> None:
        """Each writer's layout: the kernel's classes in order (`classes`), which are rows
        (`p_classes`) and which reduced (`r_classes`), their size parameters (`cname`) and the
        first tile frame (set_frame)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the tile frame
    def set_frame(self, rc: int, cc: int, row: str, col: str, blocks: tuple[str, str],
                  mask: str) -> None:
        """Tiles run class rc along rows (index `row`, mask `mask_<row>`) and cc along
        columns; `mask` masks both (batch classes index by `bidx`)."""
        self.idx = dict(self.bidx) | {rc: row, cc: col}
        self.axis_of = {rc: "p", cc: "r"}
        self.blocks = blocks
        self.masks = {frozenset(): None, frozenset("p"): f"mask_{row}",
                      frozenset("r"): f"mask_{col}", frozenset("pr"): mask}

    @contextlib.contextmanager
    def assuming(self, unmasked: set[int], factor: dict[int, str | None] | None = None
                 ) -> Iterator[None]:
        """Emit with the select results `unmasked` known to hold on the whole tile (each is
        its value) and the mulf results of `factor` scaled by it (None: the scale left out,
        applied later), as a flash kernel's whole tiles and base-2 scores want."""
        saved = self.unmasked, self.factor
        self.unmasked, self.factor = unmasked, factor or {}
        try:
            yield
        finally:
            self.unmasked, self.factor = saved

    def gen(self, gi: int) -> Generic:
        node = self.g.nodes[gi]
        assert isinstance(node, Generic)
        return node

    # ------------------------------------------------------------------ classes and tensors
    def access_of(self, t: int) -> list[int | None]:
        """Index classes of tensor t's axes as the kernel first touches it."""
        k = self.k
        if t in self.producer:
            gi = self.producer[t]
            node = self.gen(gi)
            pos = node.results.index(t)
            return k.access(gi, node.maps[len(node.inputs) + pos])
        for gi in k.generics:
            node = self.gen(gi)
            for u, m in zip([*node.inputs, *node.outputs], node.maps, strict=True):
                if u == t:
                    return k.access(gi, m)
        return [None] * len(self.g.tensors[t].shape)

    def tensor_arg(self, t: int, is_output: bool) -> TensorArg:
        info = self.g.tensors[t]
        axes = [a for a, s in enumerate(info.shape) if s != 1]
        return TensorArg(t, self.names[t], self.access_of(t), axes, info.dtype, is_output)

    def axes_of_classes(self, classes: list[int | None]) -> frozenset[str]:
        return frozenset(self.axis_of[c] for c in classes if c in self.axis_of)

    def offset(self, ta: TensorArg, classes: list[int | None]) -> str:
        terms = [f"{self.idx[c]} * {ta.name}_s{axis}" for axis, c in enumerate(classes)
                 if c is not None and axis in ta.stride_axes]
        return " + ".join(terms) if terms else "0"

    def _mask(self, axes: frozenset[str]) -> str | None:
        return self.masks[axes]

    # ------------------------------------------------------------------ values
    def resolve(self, v: int, local: dict[int, str], scope: Scope) -> str:
        if v in local:
            return local[v]
        op = self.func_ops.get(v)
        if op is not None and op.name == "arith.constant":
            return literal(op.attrs["value"], op.dtype)
        if v not in self.scalars:
            self.scalars.append(v)
        if self.target == "interpreter" and self._annotation(v):
            # the interpreter ignores the annotation: it would round the Python float to
            # float32 where it meets a tensor
            return f"tl.full([], a{v}, tl.float64)"
        return f"a{v}"

    def tensor_value(self, t: int, scope: Scope, allow_reduce: bool,
                     classes: list[int | None] | None = None) -> str:
        """The tile of tensor t: computed in this kernel, a fill constant, or loaded (indexed by
        the reading generic's map, `classes`)."""
        got = scope.get(t)
        if got is not None:
            return got
        if t in self.plan.fills:
            return self.resolve(self.plan.fills[t], {}, scope)
        if t in self.producer:
            self.emit_generic(self.producer[t], scope, allow_reduce)
            got = scope.get(t)
            assert got is not None
            return got
        ta = self.tensor_arg(t, False)
        classes = ta.classes if classes is None else classes
        key = (t, tuple(classes))
        got = scope.get(key)
        if got is not None:
            return got
        axes = self.axes_of_classes(classes)
        mask = self._mask(axes)
        var = scope.fresh(f"{ta.name}_{len(scope.lines)}")
        masked = f", mask={mask}, other=0" if mask else ""
        offset = self.offset(ta, classes)
        if not axes and self.target == "interpreter":
            # one element per program, loaded as a [1, 1] tile: the interpreter mis-types a
            # 0-d comparison that meets a tile in & or | (GPU kernels keep the scalar load)
            offset += " + tl.full([1, 1], 0, tl.int32)"
        scope.emit(f"{var} = tl.load({ta.name}_ptr + {offset}{masked})")
        scope.values[key] = var
        scope.tile(var, axes)
        return var

    def emit_generic(self, gi: int, scope: Scope, allow_reduce: bool,
                     accumulate: dict[int, str] | None = None, fold_mask: str = "mask_r",
                     per_tile: bool = False) -> None:
        """Emit generic gi's region over tiles. A reduction either reduces its tile now
        (single pass) or, with `accumulate` (yield -> accumulator), folds one chunk into an
        accumulator tile (looped), where `fold_mask` holds (a column sum: "mask"); with
        `per_tile`, each chunk is reduced along its rows first and the accumulators are
        [rows, 1] (fewer registers where the chunk is a whole dot tile)."""
        node = self.gen(gi)
        reduces = self.plan.reduces(gi)
        if reduces and not (allow_reduce or accumulate is not None):
            raise AssertionError("a reduction must be computed in an earlier phase")
        n_in = len(node.inputs)
        local: dict[int, str] = {}
        for bid, t, m in zip(node.block_args[:n_in], node.inputs, node.maps[:n_in], strict=True):
            local[bid] = self.tensor_value(t, scope, allow_reduce, self.k.access(gi, m))
        if not reduces:
            for bid, t in zip(node.block_args[n_in:], node.outputs, strict=True):
                if t in self.plan.fills or t in self.producer or t in self.k.reads:
                    local[bid] = self.tensor_value(t, scope, allow_reduce)
        combiners = self.combiners(node) if reduces else {}
        loc = short_loc(node.loc)
        for op in node.body:
            if op.results[0] in combiners:
                continue
            if op.name == "linalg.index":
                local[op.results[0]] = self.loop_index(gi, op.attrs["dim"])
                continue
            if op.results[0] in self.unmasked:  # a mask known to be all true on this tile
                local[op.results[0]] = self.resolve(op.operands[1], local, scope)
                continue
            args = [self.resolve(o, local, scope) for o in op.operands]
            if op.results[0] in self.factor:  # x * c -> x * (c * factor): c is the scalar
                k = 1 if scope.axes_of(args[1]) is None else 0
                if self.factor[op.results[0]] is None:  # x * c -> x: c applied later
                    local[op.results[0]] = args[1 - k]
                    continue
                args[k] = f"({args[k]} * {self.factor[op.results[0]]})"
            local[op.results[0]] = self.emit_op(op, args, scope, loc)
        for r, y, init in zip(node.results, node.yields, node.outputs, strict=True):
            if y not in combiners:
                scope.values[r] = self.resolve(y, local, scope)
                continue
            op, f = combiners[y]
            fv = f"tl.where({fold_mask}, {self.resolve(f, local, scope)}, {self.identity(op)})"
            if accumulate is not None:
                acc = accumulate[y]
                fv = self.reduce_call(op, fv) if per_tile else fv
                scope.emit(f"{acc} = {RULES[op.name]([acc, fv], op, self.target)}")
                continue
            var = f"red{r}"
            scope.emit(f"{var} = {self.reduce_call(op, fv)}")
            scope.tile(var, (scope.axes_of(self.resolve(f, local, scope)) or frozenset())
                       & frozenset("p"))
            self.finish_reduce(r, op, var, scope, init)

    def emit_op(self, op: Op, args: list[str], scope: Scope, loc: str = "") -> str:
        """Emit region op `op` on Triton values `args` as `v<result>`, with the user's line
        (op's own, else `loc`) as a comment; return the variable."""
        if op.name not in RULES:
            raise BackendError(f"the Triton backend has no rule for {op.name}")
        var = f"v{op.results[0]}"
        where = short_loc(op.loc) or loc
        comment = f"  # {where}" if where else ""
        scope.emit(f"{var} = {RULES[op.name](args, op, self.target)}{comment}")
        scope.derived(var, args)
        return var

    @staticmethod
    def program_id(scope: Scope, index: str = "tl.program_id(0)") -> None:
        """`pid`, this program's index (or the row block a persistent program is at), 64-bit
        when offsets may pass 2**31 elements."""
        scope.emit(f"pid = {index}")
        scope.emit("if USE_I64:  # offsets past 2**31 elements")
        scope.emit("    pid = pid.to(tl.int64)")

    def loop_index(self, gi: int, loop: int) -> str:
        c = self.k.loop_class.get((gi, loop))
        return "0" if c is None else self.idx[c]

    def combiners(self, node: Generic) -> dict[int, tuple[Op, int]]:
        """yield value -> (combiner op, the value it folds in), checked to be acc-free."""
        n_in = len(node.inputs)
        accs = node.block_args[n_in:]
        by = {op.results[0]: op for op in node.body}
        out = {}
        for y, acc in zip(node.yields, accs, strict=True):
            op = by.get(y)
            if op is None or op.name not in REDUCE or acc not in op.operands:
                raise BackendError("unsupported reduction body (not a known combiner)")
            other = op.operands[1] if op.operands[0] == acc else op.operands[0]
            out[y] = (op, other)
        return out

    def reduce_call(self, op: Op, tile: str) -> str:
        fn = REDUCE[op.name][0]
        if op.name not in NAN_COMBINE:
            return self.row_reduce(fn, tile)
        if self.target != "interpreter":
            return f"tl.reduce({tile}, 1, {NAN_COMBINE[op.name]}, keep_dims=True)"
        # the interpreter's max and min are numpy's nanmax and nanmin: put the NaN back
        nan = self.row_reduce("tl.max", f"({tile} != {tile}).to(tl.int32)")
        return f'tl.where({nan} > 0, float("nan"), {self.row_reduce(fn, tile)})'

    def row_reduce(self, fn: str, tile: str) -> str:
        """tl.sum / tl.max / tl.min of a tile along axis 1, keeping the dim."""
        if self.target == "interpreter":  # tl.sum & co. are jit functions it cannot call
            combine = {"tl.sum": "_sum_combine", "tl.max": "_elementwise_max",
                       "tl.min": "_elementwise_min"}[fn]
            return f"tl.reduce({tile}, 1, tl.standard.{combine}, keep_dims=True)"
        return f"{fn}({tile}, axis=1, keep_dims=True)"

    def identity(self, op: Op) -> str:
        _fn, ident = REDUCE[op.name]
        if ident is None:
            ident = int_identity(op.name, op.dtype)
        return literal(ident, op.dtype)

    def finish_reduce(self, r: int, op: Op, var: str, scope: Scope, init: int) -> None:
        init_v = self.tensor_value(init, scope, True) if (
            init in self.plan.fills or init in self.producer or init in self.k.reads) else None
        if init_v is not None and init_v != self.identity(op):
            out = f"res{r}"
            scope.emit(f"{out} = {RULES[op.name]([init_v, var], op, self.target)}")
            scope.derived(out, [init_v, var])
            var = out
        scope.values[r] = var

    # ------------------------------------------------------------------ kernels
    constexprs: tuple[str, ...] = ()  # each writer's, from constexprs.py

    def header(self, name: str, tensors: list[TensorArg], looped: bool,
               extra: tuple[str, ...] = (), note: str = "") -> list[str]:
        params = []
        for ta in tensors:
            params.append(f"{ta.name}_ptr")
        for ta in tensors:
            params += [f"{ta.name}_s{axis}" for axis in ta.stride_axes]
        params += [self.cname[c] for c in self.classes]
        params.append(SCALARS)  # the body's scalars, known once it is written (with_scalars)
        params += [*extra, *(f"{c}: tl.constexpr" for c in self.constexprs)]
        locs = sorted({short_loc(x) for x in self.k.locs if short_loc(x)})
        doc = f"{self.k.kind} kernel {self.k.index}" + (" (looped)" if looped else "") + note
        if locs:
            doc += ": " + ", ".join(locs)
        return ["@triton.jit", f"def {name}({', '.join(params)}):", f'    """{doc}"""']

    def store(self, t: int, scope: Scope) -> None:
        ta = self.tensor_arg(t, True)
        val = self.tensor_value(t, scope, True)
        axes = self.axes_of_classes(ta.classes)
        have = scope.axes_of(val)
        shape = f"[{self.blocks[0] if 'p' in axes else 1}, {self.blocks[1] if 'r' in axes else 1}]"
        if have is None:
            val = f"tl.full({shape}, {val}, {ta.name}_ptr.dtype.element_ty)"
        elif have != axes:
            val = f"tl.broadcast_to({val}, {shape})"
        mask = self._mask(axes)
        masked = f", mask={mask}" if mask else ""
        offset = self.offset(ta, ta.classes) if axes else "tl.full([1, 1], 0, tl.int32)"
        scope.emit(f"tl.store({ta.name}_ptr + {offset}, "
                   f"({val}).to({ta.name}_ptr.dtype.element_ty){masked})")

    def _annotation(self, v: int) -> str:
        """A float64 scalar's parameter annotation: Triton takes an unannotated Python float
        as float32."""
        op = self.func_ops.get(v)
        dtype = op.dtype if op is not None else self.g.arg_info[self.g.args.index(v)]
        return ": tl.float64" if dtype == f64 else ""

    def scalar_params(self) -> dict[int, str]:
        """The scalars the body read (collected as it was written): each one's parameter."""
        return {v: f"a{v}{self._annotation(v)}" for v in self.scalars}

    def with_scalars(self, lines: list[str]) -> str:
        """The kernel's text with the scalars its body read put in each header's
        parameters."""
        text = "\n".join(lines)
        names = ", ".join(self.scalar_params().values())
        return text.replace(f", {SCALARS}", f", {names}" if names else "").replace(
            f"{SCALARS}, ", f"{names}, " if names else "")

