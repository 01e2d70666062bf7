"""Run a compiled program on torch tensors: picks the backend for the inputs' device."""

from __future__ import annotations

from typing import Any

import numpy as np

from fusile.backends import reference


def _to_numpy(v: Any) -> Any:
    import torch

    if isinstance(v, torch.Tensor):
        t = v.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.numpy()
    return v


def backend_name() -> str:
    return "the float64 reference backend"


def run_reference(compiled: Any, args: list[Any]) -> list[np.ndarray]:
    return reference.evaluate(compiled.reference_graph, [_to_numpy(a) for a in args])


def run(compiled: Any, args: list[Any]) -> list[Any]:
    """Evaluate on the reference backend and return torch tensors of the result dtypes, on the
    inputs' device. (Kernel backends plug in here.)"""
    import torch

    from fusile.backends.torch_dtypes import to_torch

    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    outs = run_reference(compiled, args)
    return [torch.from_numpy(np.array(o, order="C")).to(device=device, dtype=to_torch(t.dtype))
            for o, t in zip(outs, compiled.typed.result_types, strict=True)]
