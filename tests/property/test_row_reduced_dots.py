"""Random row-reduced contractions (a product's rows reduced in the same kernel: dot-rows,
lowering/dot_rows.py) agree with torch in float64 and with the float64 reference: random
sizes (unit and ragged ones among them), a batch, 16-bit and float32 inputs, elementwise
functions of the product (scales, soft-capping, a per-column bias, masks by value), one to
three reductions over its rows (log-sum-exp online, max, min, sum, mean), through the
one-kernel path and the split-columns path."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

import fusile
from fusile import config
from tests.property.programs import DTYPES, Program
from tests.property.test_cross_backend import DEEP, SETTINGS, _run

MODS = {
    "scale": ("{z} * 0.5", lambda b: b * 0.5),
    "softcap": ("tanh({z} / 3.0) * 3.0", lambda b: min(b, 3.0)),
    "bias": ("{z} + b", lambda b: b + 2.0),
    "mask": ("where({z} > 0.5, {z}, {z} * 0.25)", lambda b: b),
}
REDUCE = ["logsumexp", "logsumexp", "max", "min", "sum", "mean"]


@st.composite
def row_reduced_dots(draw: st.DrawFn) -> tuple[Program, int, bool]:
    """(the program, a dot_rows_splits value, whether it must take a dot-rows kernel: no
    unit size among m, n and k, which the flash and dot kinds leave to general kernels)"""
    m = draw(st.sampled_from([1, 2, 5, 31, 64, 127]))
    n = draw(st.sampled_from([1, 3, 17, 64, 200, 1031]))
    k = draw(st.sampled_from([1, 4, 16, 33, 64]))
    batch = draw(st.sampled_from([(), (2,), (3,)]))
    shapes = [(*batch, m, k), (*(batch if draw(st.booleans()) else ()), n, k)]
    dtype = draw(st.sampled_from(DTYPES))
    lines = [f"    z0 = (h @ w.mT) * {1.0 / k!r}"]  # |h|, |w| <= 2: |z0| <= 4
    bound, z = 4.0, "z0"
    params = ["h", "w"]
    for i, mod in enumerate(draw(st.lists(st.sampled_from(list(MODS)), max_size=2))):
        if mod == "bias" and "b" not in params:
            params.append("b")
            shapes.append((n,))
        text, grow = MODS[mod]
        lines.append(f"    z{i + 1} = {text.format(z=z)}")
        bound, z = grow(bound), f"z{i + 1}"
    terms = []
    for j, op in enumerate(draw(st.lists(st.sampled_from(REDUCE), min_size=1, max_size=3))):
        if op == "sum" and bound * n > 1e3:
            op = "mean"
        lines.append(f"    r{j} = {op}({z}, axis=-1)")
        terms.append((f"r{j}", bound * n if op == "sum" else
                      bound + math.log(n) if op == "logsumexp" else bound))
    out = " - ".join(t for t, _ in terms)
    source = "\n".join([f"def prog({', '.join(params)}):", *lines, f"    return {out}", ""])
    program = Program(source, shapes, [dtype] * len(shapes), sum(b for _, b in terms), k * n,
                      draw(st.sampled_from([0, 64])))
    return program, draw(st.sampled_from([0, 1, 3])), min(m, n, k) > 1


@settings(max_examples=2000 if DEEP else 40, **SETTINGS)
@given(row_reduced_dots())
def test_row_reduced_dots_agree_with_reference(case: tuple[Program, int, bool]) -> None:
    p, splits, fused = case
    if fused:
        compiled = fusile.from_source(p.source).compiled(*p.inputs())
        assert "dot-rows" in [k.kind for k in compiled.plan.kernels], p
    with config.override(dot_rows_splits=splits):
        _run(p, "cpu")
