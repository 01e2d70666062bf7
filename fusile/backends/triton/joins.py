"""Results made of pieces (a returned concat, fusile/dsl/concat.py): one allocation per such
result, and each piece's kernel writes into its view of it, so no copy follows the kernels.

A piece the kernels do not write (a parameter returned as it is, or the same tensor twice) is
copied into its place after them (torch's copy, which a replay repeats).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fusile.backends.torch_dtypes import to_torch
from fusile.dsl.types import Sym


@dataclass(frozen=True)
class _Join:
    dtype: Any  # torch dtype
    sizes: tuple[Any, ...]  # per axis: an int, or the index class that gives its size
    parts: tuple[tuple[int, tuple[slice, ...]], ...]  # (graph tensor, index into the result)


class Joins:
    """How a program's caller-visible results are made from its graph's results."""

    def __init__(self, compiled: Any, results: list[int], tensor_class: Any):
        env = compiled.typed.env
        self.items: list[int | _Join] = [] if compiled.typed.joins else list(results)
        for j in compiled.typed.joins:
            if isinstance(j, int):
                self.items.append(results[j])
                continue
            first = results[j.parts[0][0]]
            sizes = tuple(d if not isinstance(d := env.find(s), Sym) else
                          tensor_class(first, a) for a, s in enumerate(j.type.shape))
            self.items.append(_Join(to_torch(j.type.dtype), sizes,
                                    tuple((results[pos], index) for pos, index in j.parts)))
        # per caller result, its graph tensor (None: a join, a new tensor)
        self.ids = [i if isinstance(i, int) else None for i in self.items]
        self.joined = None in self.ids

    def place(self, env: dict[int, Any], sizes: dict[tuple, int], device: Any,
              args: set[int], rec: Any) -> list[Any]:
        """Allocate each joined result and set its pieces in env to views of it (a piece
        that is a parameter, or taken already, is copied in by `results`)."""
        import torch

        fulls: list[Any] = []
        if not self.joined:
            return fulls
        for item in self.items:
            if isinstance(item, int):
                continue
            shape = [s if isinstance(s, int) else sizes[s] for s in item.sizes]
            full = torch.empty(shape, dtype=item.dtype, device=device)
            if rec is not None:
                rec.alloc(full)
            for tid, index in item.parts:
                if tid not in args and tid not in env:
                    env[tid] = full[index]
                    if rec is not None:
                        rec.view(env[tid], full, index)
            fulls.append(full)
        return fulls

    def results(self, env: dict[int, Any], fulls: list[Any], rec: Any) -> list[Any]:
        out, made = [], iter(fulls)
        for item in self.items:
            if isinstance(item, int):
                out.append(env[item])
                continue
            full = next(made)
            for tid, index in item.parts:
                piece = full[index]
                if env[tid].data_ptr() != piece.data_ptr() or env[tid].stride() != \
                        piece.stride():
                    piece.copy_(env[tid])
                    if rec is not None:
                        rec.view(piece, full, index)
                        rec.copy(piece, env[tid])
            out.append(full)
        return out
