"""Run a compiled program on torch tensors: picks the backend for the inputs' device."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from fusile import config
from fusile.backends import reference, targets


def _to_numpy(v: Any) -> Any:
    import torch

    if isinstance(v, torch.Tensor):
        t = v.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.numpy()
    return v


_targets_by_device: dict[Any, targets.Target] = {}
_PROGRAM_LOCK = threading.Lock()


def _device_target(device: Any) -> targets.Target:
    t = _targets_by_device.get(device)
    if t is None:
        t = _targets_by_device[device] = targets.for_device(device)
    return t


def backend_name(device: str = "cpu") -> str:
    name = config.get("target")
    if name == "reference":
        return "the float64 reference backend"
    if name == "mlir-cpu" or (name == "auto" and str(device) == "cpu"):
        return "MLIR's JIT for this CPU (mlir-cpu)"
    t = targets.for_device(device) if name == "auto" else targets.get(name)
    if t.backend == "interpreter":
        return "the Triton interpreter (CPU)"
    return f"{t.name} ({t.backend})"


def run_reference(compiled: Any, args: list[Any]) -> list[np.ndarray]:
    return compiled.assemble(reference.evaluate(compiled.reference_graph,
                                                [_to_numpy(a) for a in args]))


def _target(name: str, device: Any) -> targets.Target:
    """The target FUSILE_TARGET names (or the device's own), checked to run on device."""
    if name == "auto":
        return _device_target(device)
    t = targets.get(name)
    if (t.backend == "interpreter") != (device.type == "cpu"):
        from fusile.dsl.errors import BackendError

        raise BackendError(f"FUSILE_TARGET={name} ({t.backend}) cannot run on tensors on "
                           f"{device}; unset it (auto picks the device's target), or use "
                           f"{'cpu' if device.type == 'cpu' else 'auto'} or reference")
    return t


def _program_key(name: str, device: Any, compiled: Any) -> str:
    """Programs differ by target (FUSILE_TARGET `name`, or the device's own), by the TF32
    opt-in (it changes the generated dots) and by the knobs that choose launch configs
    (SCHEDULE_KNOBS: a program caches its configs and recorded launches per size, so a knob
    set after the first call would otherwise be ignored); mlir-cpu has one program. CPU
    tensors go to mlir-cpu unless a target is named (`cpu`: the Triton interpreter) or it
    does not take the program's dtypes."""
    if name == "mlir-cpu" or (name == "auto" and device.type == "cpu" and (
            "mlir-cpu" in compiled.programs or _mlir_cpu_takes(compiled))):
        return "mlir-cpu"
    knobs = "".join(f"+{k}={v}" for k in config.SCHEDULE_KNOBS if (v := config.get(k)))
    return _target(name, device).name + ("+tf32" if config.get("tf32") else "") + knobs


def _mlir_cpu_takes(compiled: Any) -> bool:
    from fusile.backends.mlir_cpu import takes

    return takes(compiled)


def _make_program(compiled: Any, name: str, device: Any) -> Any:
    if name == "mlir-cpu":
        from fusile.backends.mlir_cpu import MlirCpuProgram

        return MlirCpuProgram(compiled)
    from fusile.backends.triton.runtime import TritonProgram

    return TritonProgram(compiled, _target(name, device))


def program_for(compiled: Any, args: list[Any]) -> Any:
    """The one dispatch step: the launchable program for these arguments, built on first use
    (None: FUSILE_TARGET=reference, the float64 oracle). Triton kernels on a GPU, MLIR's JIT
    on the CPU ("mlir-cpu", backends/mlir_cpu.py) or the Triton interpreter ("cpu"); the
    target is the inputs' device's unless FUSILE_TARGET names one."""
    import torch

    name = config.get("target")
    if name == "reference":
        return None
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    key = _program_key(name, device, compiled)
    program = compiled.programs.get(key)
    if program is None:
        with _PROGRAM_LOCK:  # first calls from several threads build the program once
            program = compiled.programs.get(key)
            if program is None:
                program = compiled.programs[key] = _make_program(
                    compiled, "mlir-cpu" if key == "mlir-cpu" else name, device)
    return program


def run(compiled: Any, args: list[Any], program: Any) -> list[Any]:
    """Run `program` (program_for's) on the arguments; None runs the float64 reference and
    returns its results as tensors of the result dtypes on the inputs' device."""
    if program is not None:
        return program(args)
    import torch

    from fusile.backends.torch_dtypes import to_torch

    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    outs = run_reference(compiled, args)
    return [torch.from_numpy(np.array(o, order="C")).to(device=device, dtype=to_torch(t.dtype))
            for o, t in zip(outs, compiled.result_types, strict=True)]
