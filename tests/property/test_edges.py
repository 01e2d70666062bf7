"""fusile agrees with torch itself (float64, torch_eval.py) where compilers go quietly wrong:
see edge_programs.py for what is drawn. Any disagreement, a NaN or infinity in a different
place included, fails."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusile
from fusile import config
from tests.bounds import checked
from tests.numerics import REL_TOL, rel_err
from tests.property import edge_programs as E
from tests.property.tolerance import check
from tests.property.torch_eval import evaluate

SETTINGS = dict(max_examples=50, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _agree(edge: E.Edge, device: str = "cpu") -> None:
    """On the interpreter every masked load and store is bounds-checked (tests/bounds.py): a
    stray address is a fault on a GPU and a silent read here."""
    fn = fusile.from_source(edge.source, filename="edge.py")
    with config.override(max_row_block=edge.max_row_block), \
            checked() if device == "cpu" else contextlib.nullcontext():
        out = fn(*(t.to(device) for t in edge.inputs))
    outs = out if isinstance(out, tuple) else (out,)
    refs = evaluate(edge.source, edge.inputs)
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs, strict=True):
        assert o.shape == r.shape, f"shape {tuple(o.shape)} != torch's {tuple(r.shape)}"
        if edge.bound is not None:
            check(o, r, edge.bound, edge.reduced)
            continue
        err = rel_err(o, r)
        tol = REL_TOL[o.dtype] * edge.scale
        assert err <= tol, f"relative error {err:.3g} > {tol:.3g} against torch"


FAMILIES = {"softmax_into_matmul": E.softmax_into_matmul, "broadcast_views": E.broadcast_views,
            "small_dims": E.small_dims, "non_finite_rows": E.non_finite_rows,
            "float64_mixes": E.float64_mixes, "one_signed_rows": E.one_signed_rows,
            "prologue_contractions": E.prologue_contractions,
            "comparisons_with_ties": E.comparisons_with_ties, "column_sums": E.column_sums,
            "sliced_reductions": E.sliced_reductions,
            "independent_outputs": E.independent_outputs}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(**SETTINGS)
@given(data=st.data())
def test_interpreter_agrees_with_torch(family: str, data: st.DataObject) -> None:
    _agree(data.draw(FAMILIES[family]()))


@pytest.mark.gpu
@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(**{**SETTINGS, "max_examples": 12})  # each draw compiles GPU kernels
@given(data=st.data())
def test_cuda_agrees_with_torch(family: str, data: st.DataObject) -> None:
    _agree(data.draw(FAMILIES[family]()), "cuda")


def test_max_over_an_empty_axis_is_a_located_error() -> None:
    fn = fusile.from_source("def f(x):\n    return max(x, axis=-1)\n", filename="m.py")
    assert fn(torch.ones(2, 3)).tolist() == [1.0, 1.0]
    with pytest.raises(fusile.FusileError, match=r"max\(\) over an empty axis") as info:
        fn(torch.ones(2, 0))
    assert "m.py:2" in str(info.value)
