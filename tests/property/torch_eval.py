"""Run a fusile program's source as plain torch code in float64: an oracle that shares no code
with fusile (no parser, no lowering, no reference backend), for the programs in
edge_programs.py. Each builtin is its torch counterpart with torch's semantics (NaN through
max/min, inf from logsumexp of a row holding inf, var with correction >= N is inf)."""

from __future__ import annotations

import math
from typing import Any

import torch


def _dims(x: torch.Tensor, axis: Any) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.dim()))
    return axis if isinstance(axis, tuple) else (axis,)


def _reduce(fn: Any) -> Any:
    return lambda x, axis=None, keepdims=False: fn(x, dim=_dims(x, axis), keepdim=keepdims)


NAMESPACE: dict[str, Any] = {
    "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt,
    "tanh": torch.tanh, "abs": torch.abs, "sigmoid": torch.sigmoid, "erf": torch.erf,
    "expm1": torch.expm1, "log1p": torch.log1p,
    "maximum": torch.maximum, "minimum": torch.minimum,
    "where": lambda c, a, b: torch.where(c, torch.as_tensor(a, dtype=torch.float64),
                                         torch.as_tensor(b, dtype=torch.float64)),
    "sum": _reduce(torch.sum), "mean": _reduce(torch.mean), "max": _reduce(torch.amax),
    "min": _reduce(torch.amin),
    "var": lambda x, axis=None, keepdims=False, correction=0: torch.var(
        x, dim=_dims(x, axis), correction=correction, keepdim=keepdims),
    "logsumexp": lambda x, axis=-1, keepdims=False: torch.logsumexp(x, dim=axis,
                                                                    keepdim=keepdims),
    "softmax": lambda x, axis=-1: torch.softmax(x, dim=axis),
    "log_softmax": lambda x, axis=-1: torch.log_softmax(x, dim=axis),
    "size": lambda x, axis: x.shape[axis],
    "concat": lambda xs, axis=0: torch.cat(xs, dim=axis),
    "stack": lambda xs, axis=0: torch.stack(xs, dim=axis),
    "inf": math.inf,
}


def evaluate(source: str, args: list[torch.Tensor]) -> list[torch.Tensor]:
    """The program's results, computed by torch in float64 from (upcast) inputs."""
    out = function(source)(*(a.detach().double().cpu() for a in args))
    return list(out) if isinstance(out, tuple) else [out]


def function(source: str) -> Any:
    """The program as a torch function (its inputs as given: autograd sees the ops)."""
    scope: dict[str, Any] = dict(NAMESPACE)
    # fusile's .T swaps the last two axes, torch's .mT does (its .T reverses them all)
    exec(compile(source.replace(".T", ".mT"), "<torch oracle>", "exec"), scope)
    return next(v for k, v in scope.items() if callable(v) and k not in NAMESPACE and
                getattr(v, "__code__", None) is not None and v.__code__.co_filename ==
                "<torch oracle>")
