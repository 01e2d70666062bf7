"""Kernel plan -> readable Triton source for row kernels (pointwise, row reductions, rows with
column partials), one @triton.jit function per kernel and its variants (codegen_variants.py:
looped, split, rows+columns).

Axis 0 of a tile ("p") runs over the kernel's parallel classes flattened (rows), axis 1 ("r")
over the reduced classes flattened (or, in a pointwise kernel, the innermost class).
"""

from __future__ import annotations

from fusile.backends.triton.codegen_variants import variants
from fusile.backends.triton.constexprs import RowConstexprs
from fusile.backends.triton.emitter import TileEmitter
from fusile.backends.triton.kernel_source import KernelSource, TensorArg
from fusile.backends.triton.scope import Scope
from fusile.lowering.partition import POINTWISE


def segment_blocks(j: int) -> tuple[str, str]:
    """The tile-size constexprs of member j of a joined launch (kinds/segments.py): the
    first member's are every row kernel's, BLOCK_P and BLOCK_R; member j's BLOCK_P_j and
    BLOCK_R_j."""
    suffix = f"_{j}" if j else ""
    return f"BLOCK_P{suffix}", f"BLOCK_R{suffix}"


class RowWriter(TileEmitter):
    constexprs: tuple[str, ...] = RowConstexprs.names()
    first_pid = "tl.program_id(0)"  # this kernel's first program (segment_member moves it)

    def segment_member(self, size_base: int, j: int) -> None:
        """Write this pointwise kernel as member j > 0 of a joined launch (kinds/segments.py):
        its size parameters numbered from `size_base`, its tile BLOCK_P_j x BLOCK_R_j, its
        program ids counted from SEGj, the first program of its range."""
        self.cname = {c: f"n{size_base + i}" for i, c in enumerate(self.classes)}
        self.blocks = segment_blocks(j)
        self.first_pid = f"tl.program_id(0) - SEG{j}"

    def _order_classes(self) -> None:
        k = self.k
        tensors = [*k.writes, *k.reads]
        main = max(tensors, key=lambda t: len(self.g.tensors[t].shape)) if tensors else None
        order: list[int] = []
        if main is not None:
            order = [c for c in self.access_of(main) if c is not None]
            order = list(dict.fromkeys(order))
        order += [c for c in k.domain if c not in order]
        if k.kind == POINTWISE:
            self.r_classes = order[-1:]
        else:
            self.r_classes = [c for c in order if c in k.reduced]
        self.p_classes = [c for c in order if c not in self.r_classes]
        self.cname = {c: f"n{i}" for i, c in enumerate(order)}
        self.idx = {c: f"i{i}" for i, c in enumerate(order)}
        self.classes = order
        # the tile frame: which tile axis each class runs along (dim 0 "p", dim 1 "r"), the
        # block sizes of those axes and the masks of each combination (a dot kernel has three)
        self.axis_of = {c: "p" for c in self.p_classes} | {c: "r" for c in self.r_classes}
        self.blocks = segment_blocks(0)
        self.masks: dict[frozenset[str], str | None] = {
            frozenset(): None, frozenset("p"): "mask_p", frozenset("r"): "mask_r",
            frozenset("pr"): "mask"}

    def sizes(self, s: Scope) -> None:
        """P and R: the rows (parallel classes) and the row length (reduced ones)."""
        s.emit(f"P = {' * '.join(self.cname[c] for c in self.p_classes) or '1'}")
        s.emit(f"R = {' * '.join(self.cname[c] for c in self.r_classes) or '1'}")

    def row_prologue(self, s: Scope, pointwise: bool, block: str | None = None) -> None:
        """Sizes, this program's rows and their indices; `block`: the row block a persistent
        program's loop is at (P and R already emitted)."""
        if block is None:
            self.sizes(s)
        self.program_id(s, block or self.first_pid)
        bp, br = self.blocks
        if pointwise:
            # at least 1: a kernel runs over empty rows for a result that spans neither axis
            # (rows.empty_grid), and a GPU's pid // 0 is garbage, not a trap
            s.emit(f"blocks_r = tl.maximum((R + {br} - 1) // {br}, 1)")
            s.emit(f"offs_p = (pid // blocks_r) * {bp} + tl.arange(0, {bp})[:, None]")
        else:
            s.emit(f"offs_p = pid * {bp} + tl.arange(0, {bp})[:, None]")
        s.emit("mask_p = offs_p < P")
        self.unflatten(s, "offs_p", self.p_classes)

    def r_index(self, s: Scope, start: str) -> None:
        s.emit(f"offs_r = {start}tl.arange(0, {self.blocks[1]})[None, :]")
        s.emit("mask_r = offs_r < R")
        s.emit("mask = mask_p & mask_r")
        self.unflatten(s, "offs_r", self.r_classes)

    def unflatten(self, s: Scope, flat: str, classes: list[int]) -> None:
        axis = "p" if flat == "offs_p" else "r"
        if len(classes) == 1:
            var = self.idx[classes[0]]
            s.emit(f"{var} = {flat}")
            s.tile(var, frozenset(axis))
            return
        rem = flat
        for c in reversed(classes):
            var = self.idx[c]
            if c == classes[0]:
                s.emit(f"{var} = {rem}")
            else:
                s.emit(f"{var} = {rem} % {self.cname[c]}")
                s.emit(f"rem_{axis} = {rem} // {self.cname[c]}")
                rem = f"rem_{axis}"
            s.tile(var, frozenset(axis))

    def write_single(self, name: str, tensors: list[TensorArg]) -> list[str]:
        body = Scope.function()
        pointwise = self.k.kind == POINTWISE
        self.row_prologue(body, pointwise)
        start = f"(pid % blocks_r) * {self.blocks[1]} + " if pointwise else ""
        self.r_index(body, start)
        for t in self.writes:
            self.store(t, body)
        return self.header(name, tensors, False) + body.lines

    def spans_p(self, gi: int) -> bool:
        node = self.gen(gi)
        return any(self.k.loop_class.get((gi, i)) in self.p_classes for i in range(node.n_loops))

    def source(self) -> KernelSource:
        name = f"fusile_k{self.k.index}"
        tensors = [self.tensor_arg(t, False) for t in self.k.reads] + [
            self.tensor_arg(t, True) for t in self.k.writes]
        v = variants(self, name, tensors)
        return KernelSource(name, self.k.kind, self.k.index, self.with_scalars(v.lines), tensors,
                            self.classes, self.p_classes, self.r_classes, self.k.class_global,
                            list(self.scalars), v.looped, v.split, v.combine, v.n_parts,
                            v.part_dtype)
