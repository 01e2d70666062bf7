"""The key bounds of a flash kernel's loop, from its position masks.

Masks that depend on positions alone (`where(j <= i + c, s, -inf)`, windows) bound the key
loop: when the condition is a conjunction of comparisons linear in i and j with unit
coefficient on j (other terms: sizes, constants, and tensors with one value per program
such as a per-sequence cache length), the first and last key a block of rows can see follow
from its first and last row, and key blocks outside them are never visited (causal attention
does about half the work). The tiles every row of the block sees whole need no mask at all;
the mask is applied on the others, so the bounds only need to be conservative. The same
solver serves the backward kernels, where the kept side plays the rows.
"""

from __future__ import annotations

from fusile.backends.triton.emitter import TileEmitter
from fusile.backends.triton.scope import Scope


class KeyBounds:
    """The key-bound solver of a flash writer `w`: `i` is the row class (the kept side of a
    backward kernel), `j` the looped one, `batch` the batch classes."""

    def __init__(self, w: TileEmitter, i: int, j: int, batch: list[int]):
        self.w, self.i, self.j, self.batch = w, i, j, batch

    def _affine(self, gi: int, v: int, scope: Scope) -> tuple[int, int, list[str]] | None:
        """v of generic gi as (coefficient of i, coefficient of j, constant source terms)."""
        node = self.w.gen(gi)
        op = node.defs.get(v)
        if v in node.block_args:
            return self._program_value(node.inputs[node.block_args.index(v)], scope)
        if op is None:
            return 0, 0, [self.w.resolve(v, {}, scope)]
        if op.name == "linalg.index":
            c = self.w.k.loop_class.get((gi, op.attrs["dim"]))
            return (1, 0, []) if c == self.i else (0, 1, []) if c == self.j else None
        if op.name in ("arith.index_cast", "arith.extsi", "arith.trunci"):
            return self._affine(gi, op.operands[0], scope)
        if op.name in ("arith.addi", "arith.subi"):
            a = self._affine(gi, op.operands[0], scope)
            b = self._affine(gi, op.operands[1], scope)
            if a is None or b is None:
                return None
            s = 1 if op.name == "arith.addi" else -1
            cb = [f"({t})" if s > 0 else f"(-({t}))" for t in b[2]]
            return a[0] + s * b[0], a[1] + s * b[1], [*a[2], *cb]
        return None

    def _program_value(self, t: int, scope: Scope) -> tuple[int, int, list[str]] | None:
        """Tensor t as a term of a bound when it has one value per program: read from memory
        and indexed by batch loops only (a per-sequence cache length), loaded once here."""
        if t in self.w.producer or t in self.w.plan.fills:
            return None
        ta = self.w.tensor_arg(t, False)
        if any(c is not None and c not in self.batch for c in ta.classes):
            return None
        var = scope.values.get(("bound", t))
        if var is None:
            var = scope.values[("bound", t)] = scope.fresh(f"{ta.name}_bound")
            scope.emit(f"{var} = tl.load({ta.name}_ptr + {self.w.offset(ta, ta.classes)})")
        return 0, 0, [var]

    def _bounds(self, gi: int, cond: int, scope: Scope, lo: list[str], hi: list[str],
                lo_all: list[str], hi_all: list[str]) -> bool:
        """Collect the key bounds implied by condition `cond` for rows [first, last]: where
        any row may see keys ([lo, hi)) and where every row sees them all ([lo_all, hi_all)).
        True when the condition is exactly the conjunction of those bounds."""
        node = self.w.gen(gi)
        op = node.defs.get(cond)
        if op is None:
            return False
        if op.name == "arith.andi":
            done = [self._bounds(gi, o, scope, lo, hi, lo_all, hi_all) for o in op.operands]
            return all(done)
        if op.name != "arith.cmpi" or op.attrs["predicate"] not in ("slt", "sle", "sgt", "sge"):
            return False
        a = self._affine(gi, op.operands[0], scope)
        b = self._affine(gi, op.operands[1], scope)
        if a is None or b is None:
            return False
        # a - b (pred) 0  ->  cj * j + ci * i + c (pred) 0
        ci, cj = a[0] - b[0], a[1] - b[1]
        c = " + ".join([*a[2], *(f"(-({t}))" for t in b[2])]) or "0"
        pred = op.attrs["predicate"]
        if cj not in (1, -1) or ci not in (-1, 0, 1):
            return False
        if cj == -1:  # multiply by -1: flip the predicate
            ci, c = -ci, f"-({c})"
            pred = {"slt": "sgt", "sle": "sge", "sgt": "slt", "sge": "sle"}[pred]
        # j + ci * i + c (pred) 0  <=>  j (pred) -ci * i - c
        first, last = "row0", "(row0 + BLOCK_M - 1)"

        def bound(row: str) -> str:
            return f"{-ci} * {row} - ({c})" if ci else f"-({c})"

        if pred in ("slt", "sle"):  # j below a bound: any row (largest), all rows (smallest)
            one = 1 if pred == "sle" else 0
            hi.append(f"{bound(last if -ci > 0 else first)} + {one}")
            hi_all.append(f"{bound(first if -ci > 0 else last)} + {one}")
        else:
            one = 1 if pred == "sgt" else 0
            lo.append(f"{bound(first if -ci > 0 else last)} + {one}")
            lo_all.append(f"{bound(last if -ci > 0 else first)} + {one}")
        return True

    def loop_stages(self, top: Scope, masks: tuple[tuple[int, int], ...], n: str
                    ) -> list[tuple[str, str, bool]]:
        """Emit the loop bounds and return the loop's stages (start, stop, full): tiles
        partly visible (masks applied) before and after the tiles every row sees whole, where
        masks and the ragged end are skipped. One masked stage when a mask is not exactly a
        conjunction of affine bounds. `n` is the looped extent."""
        e = top.emit
        lo: list[str] = []
        hi: list[str] = []
        lo_all: list[str] = []
        hi_all: list[str] = []
        bounds = top.child()
        exact = True
        for gi, sel in masks:
            sel_op = next(op for op in self.w.gen(gi).body if op.results[0] == sel)
            exact &= self._bounds(gi, sel_op.operands[0], bounds, lo, hi, lo_all, hi_all)
        top.lines += bounds.lines
        e("lo = 0")
        for b in lo:
            e(f"lo = tl.maximum(lo, ({b}) // BLOCK_N * BLOCK_N)  # the first tile any row sees")
        e(f"hi = {n}")
        for b in hi:
            e(f"hi = tl.minimum(hi, {b})  # past the last one")
        if hi:  # no position visible: an empty range, never a negative bound (Triton's //
            e("hi = tl.maximum(hi, lo)")  # truncates toward 0: a negative tile start goes wrong)
        if not exact:
            return [("lo", "hi", False)]
        e("lo_all = lo")
        for b in lo_all:
            e(f"lo_all = tl.maximum(lo_all, {b})  # from here every row sees every key ...")
        e(f"hi_all = tl.minimum(hi, {n} // BLOCK_N * BLOCK_N)")
        for b in hi_all:
            e(f"hi_all = tl.minimum(hi_all, {b})  # ... up to here")
        if hi_all:
            e("hi_all = tl.maximum(hi_all, 0)")
        e("mid_lo = tl.minimum((lo_all + BLOCK_N - 1) // BLOCK_N * BLOCK_N, hi)")
        e("mid_hi = tl.maximum(mid_lo, hi_all // BLOCK_N * BLOCK_N)")
        return [("lo", "mid_lo", False), ("mid_lo", "mid_hi", True), ("mid_hi", "hi", False)]
