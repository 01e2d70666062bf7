"""dtypes, symbolic shapes, broadcasting and promotion.

Shapes are tuples of dims; a dim is an int or a `Sym` (a size known only at run time). Syms that
meet in broadcasting are unified in a `ShapeEnv` (union-find); the equalities it collects are
checked against the real sizes at each call, so a compiled signature serves every size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fusile.dsl.errors import ShapeMismatchError, Span


@dataclass(frozen=True)
class DType:
    name: str
    kind: str  # "f" float, "i" signed int, "b" bool
    bits: int

    def __repr__(self) -> str:
        return self.name

    @property
    def is_float(self) -> bool:
        return self.kind == "f"

    def __getitem__(self, dims: Any) -> TensorSpec:
        """`bf16["M", 4096]`: a tensor spec for annotations and ahead-of-time signatures."""
        return TensorSpec(self, dims if isinstance(dims, tuple) else (dims,))

    @property
    def compute(self) -> DType:
        """The dtype arithmetic runs in: float32 for 16-bit floats (DESIGN.md, Numerics)."""
        return f32 if self.kind == "f" and self.bits < 32 else self


bf16 = DType("bf16", "f", 16)
f16 = DType("f16", "f", 16)
f32 = DType("f32", "f", 32)
f64 = DType("f64", "f", 64)
i32 = DType("i32", "i", 32)
i64 = DType("i64", "i", 64)
bool_ = DType("bool", "b", 1)

DTYPES: dict[str, DType] = {d.name: d for d in (bf16, f16, f32, f64, i32, i64, bool_)}
ALIASES: dict[str, DType] = {
    **DTYPES,
    "bfloat16": bf16, "float16": f16, "half": f16, "float32": f32, "float": f32,
    "float64": f64, "double": f64, "int32": i32, "int64": i64, "int": i64, "bool_": bool_,
}
_RANK = {"b": 0, "i": 1, "f": 2}


def promote(a: DType, b: DType) -> DType:
    """Promotion of two tensor dtypes (numpy/torch rules; bf16 with f16 gives f32)."""
    if a == b:
        return a
    if _RANK[a.kind] != _RANK[b.kind]:
        return a if _RANK[a.kind] > _RANK[b.kind] else b
    if a.bits == b.bits:  # bf16 vs f16
        return f32
    return a if a.bits > b.bits else b


def promote_weak(strong: DType, weak: DType) -> DType:
    """A Python scalar (weak) meets a tensor dtype: the tensor wins unless the scalar's kind is
    higher (an int tensor times 0.5 is float32, a bool tensor plus 1 is int64)."""
    if _RANK[weak.kind] <= _RANK[strong.kind]:
        return strong
    return f32 if weak.kind == "f" else i64


@dataclass(frozen=True)
class TensorSpec:
    """`bf16["M", 4096]`: a dtype with dims (names are symbolic sizes, ints are fixed)."""

    dtype: DType
    dims: tuple[int | str, ...] | None  # None: any rank

    def __repr__(self) -> str:
        if self.dims is None:
            return repr(self.dtype)
        return f"{self.dtype}[{', '.join(repr(d) for d in self.dims)}]"



class Tensor:
    """An annotation for a tensor parameter of any dtype, `Tensor[..., "L", "D"]` naming its
    trailing axes (fusile reads it from the source; at run time it is this class)."""

    def __class_getitem__(cls, dims: Any) -> type[Tensor]:
        return cls


# ----------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Sym:
    name: str

    def __repr__(self) -> str:
        return self.name


Dim = int | Sym
Shape = tuple[Dim, ...]


def show_shape(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


@dataclass
class ShapeEnv:
    """Union-find over symbolic dims; a class may be bound to a concrete size."""

    parent: dict[Sym, Dim] = field(default_factory=dict)
    origin: dict[Sym, Span | None] = field(default_factory=dict)  # where each merge was required
    # dims that must not be 0 at run time (max/min over them), with where and why
    nonempty: list[tuple[Dim, Span, Any, str]] = field(default_factory=list)

    def find(self, d: Dim) -> Dim:
        while isinstance(d, Sym) and d in self.parent:
            nxt = self.parent[d]
            if isinstance(nxt, Sym) and nxt in self.parent:
                self.parent[d] = self.parent[nxt]  # path halving
            d = nxt
        return d

    def resolve(self, shape: Shape) -> Shape:
        return tuple(self.find(d) for d in shape)

    def unify(self, a: Dim, b: Dim, span: Span | None) -> Dim | None:
        """Make a and b the same size; None if that is impossible (two different ints)."""
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if isinstance(a, int) and isinstance(b, int):
            return None
        if isinstance(a, Sym):
            self.parent[a], self.origin[a] = b, span
            return b
        assert isinstance(b, Sym)
        self.parent[b], self.origin[b] = a, span
        return a

    def broadcast(self, shapes: list[Shape], span: Span | None) -> Shape:
        """numpy broadcasting; a dim of 1 stretches, other dims must agree (syms are unified)."""
        rank = max((len(s) for s in shapes), default=0)
        out: list[Dim] = []
        for i in range(rank):
            dims = [self.find(s[len(s) - rank + i]) for s in shapes if len(s) - rank + i >= 0]
            dims = [d for d in dims if d != 1]
            if not dims:
                out.append(1)
                continue
            merged: Dim | None = dims[0]
            for d in dims[1:]:
                assert merged is not None
                merged = self.unify(merged, d, span)
                if merged is None:
                    shown = " and ".join(show_shape(self.resolve(s)) for s in shapes)
                    raise ShapeMismatchError(f"cannot broadcast shapes {shown}", span)
            assert merged is not None
            out.append(merged)
        return tuple(self.find(d) for d in out)


# ----------------------------------------------------------------------------- value types


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: Shape
    # computed from Python numbers alone (where(c, 0.25, 0.75)): like a number, it never
    # widens a tensor it meets
    weak: bool = field(default=False, compare=False)

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"{self.dtype}{list(self.shape)}"


@dataclass(frozen=True)
class ScalarType:
    """A Python number or a scalar parameter: weakly typed (the tensor's dtype wins)."""

    dtype: DType
    weak: bool = True

    def __repr__(self) -> str:
        return f"{self.dtype} scalar"


ValueType = TensorType | ScalarType


def result_dtype(types: list[ValueType]) -> DType:
    """Promotion over a mix of tensors and scalars."""
    strong = [t.dtype for t in types if not t.weak]
    weak = [t.dtype for t in types if t.weak]
    if not strong:
        out = weak[0]
        for d in weak[1:]:
            out = promote(out, d)
        return out
    out = strong[0]
    for d in strong[1:]:
        out = promote(out, d)
    for d in weak:
        out = promote_weak(out, d)
    return out
