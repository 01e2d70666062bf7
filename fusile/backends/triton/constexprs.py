"""A kernel's constexpr parameters, declared once per kind of kernel: one frozen dataclass
whose fields, upper-cased and in order, are the parameters' names. The writer puts `names()`
in the kernel's signature, and the launch and the ahead-of-time build pass one instance's
`values()`, so a name cannot drift between the three (tests/backends/test_constexprs.py
checks every kind's launches against its kernels' signatures).

A field with NUMBERED metadata holds one value per head dim and names one parameter each
(BLOCK_H0, BLOCK_H1, ...); a field that defaults to None is a parameter only some kernels of
the kind take (POS_SCALE: only where the score scale is a runtime scalar)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

NUMBERED = {"numbered": True}  # a field's metadata: one parameter per value


@dataclass(frozen=True)
class Constexprs:
    @classmethod
    def names(cls, **shape: int | bool) -> tuple[str, ...]:
        """The parameters in signature order. `shape` gives each numbered field's count and
        whether the kernel takes each optional one."""
        out: list[str] = []
        for f in fields(cls):
            name = f.name.upper()
            if f.metadata.get("numbered"):
                out += [f"{name}{i}" for i in range(int(shape[f.name]))]
            elif f.default is not None or shape.get(f.name):
                out.append(name)
        return tuple(out)

    def values(self) -> dict[str, Any]:
        """The parameters by name, as a launch passes them."""
        out: dict[str, Any] = {}
        for attr, name, numbered in _layout(type(self)):
            v = getattr(self, attr)
            if numbered:
                out.update((f"{name}{i}", x) for i, x in enumerate(v))
            elif v is not None:
                out[name] = v
        return out


_LAYOUTS: dict[type, tuple[tuple[str, str, bool], ...]] = {}


def _layout(cls: type) -> tuple[tuple[str, str, bool], ...]:
    """Each field's attribute, parameter name and whether it is numbered, read once per class
    (dataclasses.fields() on every launch cost microseconds of host time a call)."""
    got = _LAYOUTS.get(cls)
    if got is None:
        got = _LAYOUTS[cls] = tuple((f.name, f.name.upper(), bool(f.metadata.get("numbered")))
                                    for f in fields(cls))
    return got


@dataclass(frozen=True)
class RowConstexprs(Constexprs):
    """Pointwise and row kernels (codegen.py): rows per program, row elements per block."""
    block_p: int
    block_r: int
    use_i64: bool  # 64-bit offsets (a tensor over 2**31 elements)


@dataclass(frozen=True)
class DotConstexprs(Constexprs):
    """Contractions (codegen_dot.py): the result tile, the reduction tile, row tiles grouped
    for L2 reuse, and whether BLOCK_K divides K (then the K masks fold away)."""
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    even_k: bool
    use_i64: bool


@dataclass(frozen=True)
class AttnConstexprs(Constexprs):
    """Flash attention forward (codegen_attn.py): query rows and keys per tile, the head
    dims' power-of-two blocks, whether both are their blocks, whether BLOCK_N divides the key
    length, and the sign of a runtime score scale."""
    block_m: int
    block_n: int
    block_d: int
    block_e: int
    even_heads: bool
    even_n: bool
    use_i64: bool
    pos_scale: bool | None = None


@dataclass(frozen=True)
class GradConstexprs(Constexprs):
    """Flash attention backward (codegen_grad.py): kept and looped positions per tile, one
    block per head dim, whether every head dim is its block, and whether BLOCK_N divides the
    looped length."""
    block_m: int
    block_n: int
    block_h: tuple[int, ...] = field(metadata=NUMBERED)
    even_heads: bool
    even_n: bool
    use_i64: bool


@dataclass(frozen=True)
class DotRowsConstexprs(Constexprs):
    """A contraction whose rows are reduced on chip (codegen_dot_rows.py): rows and columns
    per tile, the contracted tile, and whether BLOCK_K divides K (then its masks fold away)."""
    block_m: int
    block_n: int
    block_k: int
    even_k: bool
    use_i64: bool
