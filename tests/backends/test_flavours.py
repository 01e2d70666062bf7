"""The GPU flavour of the generated Triton checked without a GPU: line by line it must match
the interpreter flavour (which the CPU tests run) but for the documented substitutions
(libdevice calls the interpreter cannot make, tl.sum & co. it cannot call, NaN-keeping
max/min). A wrong libdevice function or reduction in GPU-only code fails here."""

from __future__ import annotations

import re

import pytest
import torch

import fusile
from fusile import samples
from fusile.backends.triton.generate import generate
from fusile.lowering.graph import tensor_names
from fusile.lowering.partition import partition

# (GPU expression, interpreter expression) heads that compute the same thing
SUBSTITUTIONS = [
    (r"^libdevice\.tanh\(", r"tl\.exp\(-2\.0 \* tl\.abs\("),
    (r"^libdevice\.log1p\(", r"^tl\.where\(\(1\.0 \+ .*\) == 1\.0, "),  # Kahan's forms
    (r"^libdevice\.expm1\(", r"^tl\.where\(tl\.exp\(.*\) == 1\.0, "),
    (r"^libdevice\.pow\(", r"^tl\.exp2\("),
    (r"^tl\.sum\(", r"^tl\.reduce\(.*, tl\.standard\._sum_combine, keep_dims=True\)$"),
    (r"^tl\.max\(", r"^tl\.reduce\(.*, tl\.standard\._elementwise_max, keep_dims=True\)$"),
    (r"^tl\.min\(", r"^tl\.reduce\(.*, tl\.standard\._elementwise_min, keep_dims=True\)$"),
    (r"^tl\.reduce\(.*, _fusile_max_nan, keep_dims=True\)$",
     r'^tl\.where\(.* > 0, float\("nan"\), tl\.reduce\(.*_elementwise_max, keep_dims=True\)\)$'),
    (r"^tl\.reduce\(.*, _fusile_min_nan, keep_dims=True\)$",
     r'^tl\.where\(.* > 0, float\("nan"\), tl\.reduce\(.*_elementwise_min, keep_dims=True\)\)$'),
]
VALUE = re.compile(r"^\s*((?:v|red|res)\d+) = (.*?)(?:  # .*)?$")

EXTRA = {
    "math": "def f(x):\n    return tanh(x) + log1p(abs(x)) + abs(x) ** 2.5 + erf(x) + "
            "expm1(x)\n",
    "minmax": "def f(x):\n    return max(x, axis=-1) - min(x, axis=0, keepdims=True)\n",
    "columns": "def f(x):\n    return sum(x * x, axis=0) + max(x, axis=0)\n",
    "matmul": "def f(x):\n    return tanh(x @ x.T) * 2.0\n",
}


def _programs() -> list:
    out = [pytest.param(n, f, a, id=n) for n, (f, _r, a) in sorted(samples.cases(4, 64).items())]
    x = torch.randn(64, 64)
    out += [pytest.param(n, fusile.from_source(s), (x,), id=n) for n, s in EXTRA.items()]
    return out


def _values(source: str) -> list[tuple[str, str]]:
    return [(m[1], m[2]) for m in map(VALUE.match, source.splitlines()) if m]


@pytest.mark.parametrize("name,fn,args", _programs())
def test_gpu_flavour_matches_the_interpreter_flavour(name: str, fn: fusile.FusedFunction,
                                                      args: tuple) -> None:
    compiled = fn.compiled(*args)
    graph = compiled.fused_graph
    params = [compiled.typed.func.params[i].name for i in compiled.runtime_params]
    plan, names = partition(graph), tensor_names(graph, params)
    gpu = _values(generate(plan, "gpu", names)[0])
    cpu = _values(generate(plan, "interpreter", names)[0])
    assert [v for v, _ in gpu] == [v for v, _ in cpu], "the flavours compute other values"
    for (var, g), (_, c) in zip(gpu, cpu, strict=True):
        if g == c:
            continue
        assert any(re.search(gs, g) and re.search(cs, c) for gs, cs in SUBSTITUTIONS), \
            f"{name}: {var} is `{g}` on GPUs but `{c}` in the interpreter"


def test_the_comparison_sees_the_substituted_lines() -> None:
    """Not vacuous: the math program's libdevice calls and reductions are among the pairs."""
    fn = fusile.from_source(EXTRA["math"].replace("erf(x)", "sum(x, axis=-1, keepdims=True)"))
    compiled = fn.compiled(torch.randn(8, 8))
    graph = compiled.fused_graph
    plan, names = partition(graph), tensor_names(graph, ["x"])
    gpu = dict(_values(generate(plan, "gpu", names)[0]))
    heads = " ".join(gpu.values())
    for call in ("libdevice.tanh(", "libdevice.log1p(", "libdevice.expm1(", "libdevice.pow(",
                 "tl.sum("):
        assert call in heads
