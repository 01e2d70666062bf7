"""Hypothesis strategies for the programs and inputs where compilers go quietly wrong: a
softmax or logsumexp over a non-last axis feeding a matmul (not attention), one tensor
through several broadcast views in one reduction, size-0 and size-1 dims, rows holding NaN
or infinities, and float64 mixed with narrower inputs. Each draw is an `Edge`: source text
plus concrete inputs, checked against torch (torch_eval.py), not against fusile's own
reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from tests.property.programs import programs


@dataclass
class Edge:
    source: str
    inputs: list[torch.Tensor]
    scale: float = 1.0  # tolerance multiplier (matmuls and long reductions)
    bound: float | None = None  # a random program's magnitude bound (tolerance.py)
    reduced: int = 1

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        shown = ", ".join(f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}"
                          for t in self.inputs)
        return f"\n# inputs: {shown}\n{self.source}"


def _randn(draw: st.DrawFn, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
           ) -> torch.Tensor:
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


_SIZES = st.sampled_from([2, 3, 5, 8, 13, 33])


@st.composite
def softmax_into_matmul(draw: st.DrawFn) -> Edge:
    """softmax / logsumexp of q @ k^T over any axis, then @ v: attention only for the key
    axis, and every other axis must still be computed as written."""
    m, n, d, e = (draw(_SIZES) for _ in range(4))
    batch = draw(st.sampled_from([(), (2,)]))
    rank = len(batch) + 2
    axis = draw(st.integers(-rank, rank - 1))
    form = draw(st.sampled_from(["softmax", "lse", "transposed"]))
    q, k = _randn(draw, (*batch, m, d)), _randn(draw, (*batch, n, d))
    if form == "softmax":
        body = f"    p = softmax((q @ k.T) * 0.3, axis={axis})\n"
        v = _randn(draw, (*batch, n, e))
    elif form == "lse":
        body = (f"    s = (q @ k.T) * 0.3\n"
                f"    p = exp(s - logsumexp(s, axis={axis}, keepdims=True))\n")
        v = _randn(draw, (*batch, n, e))
    else:  # the scores transposed: the softmax's last axis is the query axis
        body = f"    p = softmax(((q @ k.T) * 0.3).T, axis={axis})\n"
        v = _randn(draw, (*batch, m, e))
    src = f"def prog(q, k, v):\n{body}    return p @ v\n"
    return Edge(src, [q, k, v], scale=4.0)


_VIEWS = [  # (expression, rank it reduces, whether x must be square)
    ("sum(x[None, :, :] * x[:, None, :], axis={a})", 3, False),
    ("max(x[None, :, :] * x[:, None, :], axis={a})", 3, False),
    ("x * mean(x * x[:, None], axis={a}, keepdims=True)", 3, False),
    ("sum(x[:, None, :] * x.T[:, :, None], axis={a})", 3, True),
    ("x - min(x[None] + x[:, None], axis={a})", 3, True),
    ("sum(x * x.T, axis={a}) + sum(x, axis={a})", 2, True),
]


@st.composite
def broadcast_views(draw: st.DrawFn) -> Edge:
    """One tensor read through several views (broadcasts, transposes) in one reduction."""
    expr, rank, square = draw(st.sampled_from(_VIEWS))
    axis = draw(st.integers(-rank, rank - 1))
    n = draw(_SIZES)
    x = _randn(draw, (n, n if square else draw(_SIZES)))
    return Edge(f"def prog(x):\n    return {expr.format(a=axis)}\n", [x], scale=4.0)


_EMPTY_OPS = [
    "sum(x, axis={a}, keepdims={k})", "mean(x, axis={a}, keepdims={k})",
    "var(x, axis={a}, keepdims={k})", "logsumexp(x, axis={a}, keepdims={k})",
    "softmax(x, axis={a})", "x - mean(x, axis={a}, keepdims=True)",
    "exp(x) * 2.0", "sum(x * x, axis={a}, keepdims={k}) + 1.0",
]


@st.composite
def small_dims(draw: st.DrawFn) -> Edge:
    """Dims of 0 and 1 (an empty batch, an empty reduced axis, broadcast unit dims)."""
    rank = draw(st.integers(1, 3))
    shape = tuple(draw(st.sampled_from([0, 1, 1, 3, 7])) for _ in range(rank))
    axis = draw(st.integers(-rank, rank - 1))
    expr = draw(st.sampled_from(_EMPTY_OPS)).format(a=axis, k=draw(st.booleans()))
    return Edge(f"def prog(x):\n    return {expr}\n", [_randn(draw, shape)])


@st.composite
def non_finite_rows(draw: st.DrawFn) -> Edge:
    """Rows holding NaN, +inf or -inf (some rows wholly), reduced along either axis."""
    rows, cols = draw(st.sampled_from([3, 5, 9])), draw(st.sampled_from([4, 7, 130]))
    x = _randn(draw, (rows, cols))
    for _ in range(draw(st.integers(1, 4))):
        value = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        r = draw(st.integers(0, rows - 1))
        if draw(st.booleans()):
            x[r] = value
        else:
            x[r, draw(st.integers(0, cols - 1))] = value
    op = draw(st.sampled_from(["max", "min", "logsumexp", "sum"]))
    axis = draw(st.sampled_from([-1, 0]))
    keep = draw(st.booleans())
    expr = f"{op}(x, axis={axis}, keepdims={keep})"
    if draw(st.booleans()) and op != "logsumexp":
        expr = f"{op}(x * 2.0 + 1.0, axis={axis}, keepdims={keep})"
    return Edge(f"def prog(x):\n    return {expr}\n", [x])


@st.composite
def float64_mixes(draw: st.DrawFn) -> Edge:
    """Random programs (programs.py) with float64 inputs, alone or beside float32/bf16."""
    p = draw(programs(max_ops=4))
    dtypes = [draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16]))
              for _ in p.shapes]
    dtypes[draw(st.integers(0, len(dtypes) - 1))] = torch.float64
    args = [t.to(d) for t, d in zip(p.inputs(), dtypes, strict=True)]
    return Edge(p.source, args, bound=p.bound, reduced=p.reduced)
