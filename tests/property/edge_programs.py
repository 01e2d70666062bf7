"""Hypothesis strategies for the programs and inputs where compilers go quietly wrong: a
softmax or logsumexp over a non-last axis feeding a matmul (not attention), one tensor
through several broadcast views in one reduction, size-0 and size-1 dims, rows holding NaN
or infinities, float64 mixed with narrower inputs, one-signed rows through looped and split
reductions (masked lanes must hold the identity), and contractions with prologues on both
operands and a ragged K, comparisons between tied values, and column sums beside
broadcast partners (rows+columns kernels). Each draw is an `Edge`: source text
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
    max_row_block: int = 0  # FUSILE_MAX_ROW_BLOCK for the call (0: the target's default)

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


_ELEMENTWISE = ["exp({v})", "{v} * 2.0 + 1.0", "where({v} > 0.0, {v}, {v} * 0.5)",
                "sigmoid({v})", "{v} * {v}"]


@st.composite
def independent_outputs(draw: st.DrawFn) -> Edge:
    """Two to four outputs of unrelated shapes (odd, empty, unit, some sharing an input), each
    elementwise math of its own inputs: the pointwise kernels the backend joins into one
    launch (kinds/segments.py), each member writing only its own elements."""
    n = draw(st.integers(2, 4))
    shapes = [tuple(draw(st.sampled_from([0, 1, 3, 7, 33, 130]))
                    for _ in range(draw(st.integers(1, 3)))) for _ in range(n)]
    inputs = [_randn(draw, s) for s in shapes]
    outs = []
    for i in range(n):
        expr = draw(st.sampled_from(_ELEMENTWISE)).format(v=f"x{i}")
        if i and draw(st.booleans()):  # also reads an earlier output's input, broadcast
            j = draw(st.integers(0, i - 1))
            if shapes[j] == shapes[i]:
                expr = f"{expr} + x{j}"
        outs.append(expr)
    params = ", ".join(f"x{i}" for i in range(n))
    return Edge(f"def prog({params}):\n    return {', '.join(outs)}\n", inputs)


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
    affine = draw(st.booleans()) and op != "logsumexp"
    if affine:
        expr = f"{op}(x * 2.0 + 1.0, axis={axis}, keepdims={keep})"
    return Edge(f"def prog(x):\n    return {expr}\n", [x],
                scale=_cancellation(x * 2 + 1 if affine else x, axis) if op == "sum" else 1.0)


def _cancellation(terms: torch.Tensor, axis: int) -> float:
    """How much a sum's cancellation magnifies float32's relative error, over the sums the
    reference keeps finite: ||sum |terms| || / ||sum terms|| (at least 1). A row summing
    to 0.09 from terms of size 3 is 40 ulps from its float64 value, legitimately."""
    t = terms.double()
    sums, mags = t.sum(axis), t.abs().sum(axis)
    finite = torch.isfinite(sums)
    if not finite.any():
        return 1.0
    return max(1.0, float(mags[finite].norm() / max(float(sums[finite].norm()), 1e-300)))


@st.composite
def float64_mixes(draw: st.DrawFn) -> Edge:
    """Random programs (programs.py) with float64 inputs, alone or beside float32/bf16."""
    p = draw(programs(max_ops=4))
    dtypes = [draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16]))
              for _ in p.shapes]
    dtypes[draw(st.integers(0, len(dtypes) - 1))] = torch.float64
    args = [t.to(d) for t, d in zip(p.inputs(), dtypes, strict=True)]
    return Edge(p.source, args, bound=p.bound, reduced=p.reduced)


_ONE_SIGNED = ["max(x, axis={a}, keepdims={k})", "min(x, axis={a}, keepdims={k})",
               "sum(x, axis={a}, keepdims={k})", "logsumexp(x, axis={a}, keepdims={k})",
               "x - max(x, axis={a}, keepdims=True)", "min(x * 2.0, axis={a}) + 1.0"]


@st.composite
def one_signed_rows(draw: st.DrawFn) -> Edge:
    """All-negative or all-positive values (a max over negatives is not 0, a min over
    positives is not 0), reduced along either axis with rows and columns that leave ragged
    blocks, through the looped (short row block) and split-column kernels."""
    rows = draw(st.sampled_from([1, 3, 7, 130, 300]))
    cols = draw(st.sampled_from([1, 5, 50, 129]))
    sign = draw(st.sampled_from([-1.0, 1.0]))
    x = sign * (_randn(draw, (rows, cols)).abs() + 0.5)
    expr = draw(st.sampled_from(_ONE_SIGNED)).format(a=draw(st.sampled_from([0, -1])),
                                                     k=draw(st.booleans()))
    block = draw(st.sampled_from([0, 32, 64]))
    return Edge(f"def prog(x):\n    return {expr}\n", [x], scale=2.0, max_row_block=block)


_PROLOGUES = ["exp(a) @ exp(b)", "(a * 2.0 + 1.0) @ tanh(b)", "abs(a) @ (b * b + 1.0)",
              "sigmoid(a) @ exp(b).T", "exp(a).T @ (b - 3.0)"]


@st.composite
def prologue_contractions(draw: st.DrawFn) -> Edge:
    """Contractions whose operands are computed in the kernel (exp(0) = 1, so a k tail past
    the end must be zeroed, not loaded as 0) with K not a multiple of any block."""
    expr = draw(st.sampled_from(_PROLOGUES))
    m, n = draw(st.sampled_from([1, 5, 33, 70])), draw(st.sampled_from([1, 3, 17, 65]))
    k = draw(st.sampled_from([1, 3, 17, 33, 65, 129]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    a_shape = (k, m) if expr.startswith("exp(a).T") else (m, k)
    b_shape = (n, k) if ".T @" not in expr and expr.endswith(".T") else (k, n)
    a, b = _randn(draw, a_shape, dtype) * 0.5, _randn(draw, b_shape, dtype) * 0.5
    return Edge(f"def prog(a, b):\n    return {expr}\n", [a, b], scale=8.0)


_COMPARE = ["<", "<=", ">", ">=", "==", "!="]


@st.composite
def comparisons_with_ties(draw: st.DrawFn) -> Edge:
    """Comparisons where values tie (inputs from a few small integers, compared with each
    other and with constants): < and <=, > and >= differ only there."""
    shape = (draw(st.sampled_from([1, 4, 9])), draw(st.sampled_from([3, 16, 33])))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    x, y = (torch.randint(-2, 3, shape, generator=g).to(dtype) for _ in range(2))
    cmp, cmp2 = draw(st.sampled_from(_COMPARE)), draw(st.sampled_from(_COMPARE))
    c = draw(st.sampled_from([-1.0, 0.0, 1.0]))
    form = draw(st.sampled_from([
        f"where(x {cmp} y, x + 3.0, y * 0.5)",
        f"sum(where(x {cmp} {c}, 1.0, 0.0), axis=-1)",
        f"where((x {cmp} y) & (y {cmp2} {c}), x, -y)",
        f"max(where(x {cmp} y, x, -5.0), axis=0)",
    ]))
    return Edge(f"def prog(x, y):\n    return {form}\n", [x, y])


_COLUMN_EXTRAS = ["x0 + x1", "t0 * x1", "sigmoid(t1) * x1", "t1 + x2", "x0 * x2 - t0"]


@st.composite
def column_sums(draw: st.DrawFn) -> Edge:
    """A norm's shape (a row statistic, then a sum over the rows of a row-scaled value: a
    rows+columns kernel) beside outputs over broadcast partners: x1 may add a row axis that
    the column sum does not have (it must not join that kernel), x2 runs along the columns.
    Rows long enough to loop and to take several persistent programs."""
    rows = draw(st.sampled_from([1, 2, 7, 40, 300]))
    cols = draw(st.sampled_from([1, 5, 64, 129]))
    new = draw(st.sampled_from([1, 3]))  # x1's extra row axis (size 1: no new axis)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    x0 = _randn(draw, (rows, 1, cols), dtype)
    x1 = _randn(draw, (1, new, draw(st.sampled_from([1, cols]))), dtype)
    x2 = _randn(draw, (cols,), dtype)
    extras = draw(st.lists(st.sampled_from(_COLUMN_EXTRAS), min_size=1, max_size=3,
                           unique=True))
    # the last two are not 0 on a block's padded rows, so a sum that adds them shows it
    summed = draw(st.sampled_from(["t0 * x0", "t0 * x0 + x2", "t0 + 1.0"]))
    body = ("    t0 = x0 * rsqrt(mean(x0 * x0, axis=-1, keepdims=True) + 1.0)\n"
            f"    t1 = sum({summed}, axis=0)\n")
    outs = ["t1", *(f"e{i}" for i in range(len(extras)))]
    body += "".join(f"    e{i} = {e}\n" for i, e in enumerate(extras))
    block = draw(st.sampled_from([0, 32]))
    return Edge(f"def prog(x0, x1, x2):\n{body}    return {', '.join(outs)}\n", [x0, x1, x2],
                scale=4.0, max_row_block=block)


_KEEPING = ["sum", "mean", "max", "min", "logsumexp", "var", "softmax", "log_softmax"]


@st.composite
def sliced_reductions(draw: st.DrawFn) -> Edge:
    """A reduction (or softmax) of a computed value, sliced along an axis it keeps (fusile
    slices its input there instead), then more math: any mismatch between the result's axes
    and the input's (keepdims, a reduced leading axis, a stepped or negative bound) shows."""
    shape = (draw(st.sampled_from([3, 5, 8])), draw(st.sampled_from([4, 7, 33])))
    op = draw(st.sampled_from(_KEEPING))
    axis = draw(st.sampled_from([0, 1, -1]))
    keep = draw(st.booleans())
    call = f"{op}(x * 2.0 + y, axis={axis})" if op in ("softmax", "log_softmax") else \
        f"{op}(x * 2.0 + y, axis={axis}, keepdims={keep})"
    other = 1 if axis == 0 else 0  # the axis the call keeps
    n = shape[other]
    lo = draw(st.integers(-n, n - 1))
    start = lo % n
    stop = draw(st.integers(start + 1, n))
    step = draw(st.sampled_from([1, 2]))
    cut = f"{lo}:{stop}:{step}"
    rank_out = 2 if keep or op in ("softmax", "log_softmax") else 1
    pos = other if rank_out == 2 else 0
    index = ", ".join(cut if a == pos else ":" for a in range(rank_out))
    x, y = _randn(draw, shape), _randn(draw, shape)
    return Edge(f"def prog(x, y):\n    return exp({call}[{index}] * 0.1)\n", [x, y], scale=4.0)
