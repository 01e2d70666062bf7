"""The CPU through MLIR itself (issue 23, a first step): `FUSILE_TARGET=mlir-cpu`.

The fused linalg-on-tensors module every backend reads (`compiled.stages.fused`) goes through
upstream MLIR passes (one-shot bufferization across the function boundary, linalg to loops,
then to the LLVM dialect) and MLIR's ExecutionEngine JIT-compiles it at -O3, once per compiled
signature. A call hands the torch tensors' storage to the function as memref descriptors
(no copies, strides honoured); each result comes back in a buffer the function allocated,
copied into a torch tensor and freed.

What this step is not yet: the loops are scalar and run on one thread (no tiling,
vectorisation or OpenMP), floats of 16 bits are refused (their conversions need runtime
helpers the JIT does not link), and the default CPU target is still the Triton interpreter.
"""

from __future__ import annotations

import ctypes
from typing import Any

from fusile.dsl.errors import BackendError
from fusile.dsl.types import DType, TensorType, bool_, f32, f64, i32, i64

_PIPELINE = ("builtin.module(one-shot-bufferize{bufferize-function-boundaries},"
             "convert-linalg-to-loops,lower-affine,convert-scf-to-cf,convert-math-to-llvm,"
             "convert-math-to-libm,"
             "expand-strided-metadata,finalize-memref-to-llvm,convert-arith-to-llvm,"
             "convert-cf-to-llvm,convert-func-to-llvm,reconcile-unrealized-casts)")
_CTYPES: dict[DType, Any] = {f32: ctypes.c_float, f64: ctypes.c_double, i32: ctypes.c_int32,
                             i64: ctypes.c_int64, bool_: ctypes.c_bool}
_free = ctypes.CDLL(None).free
_free.argtypes = [ctypes.c_void_p]


def _descriptor_type(rank: int, ctype: Any) -> Any:
    from torch_mlir.runtime import make_nd_memref_descriptor, make_zero_d_memref_descriptor

    return make_zero_d_memref_descriptor(ctype) if rank == 0 else \
        make_nd_memref_descriptor(rank, ctype)


class MlirCpuProgram:
    """One compiled signature, JIT-compiled for this CPU."""

    def __init__(self, compiled: Any):
        from torch_mlir import ir, passmanager
        from torch_mlir.execution_engine import ExecutionEngine

        self.compiled = compiled
        self.results: list[TensorType] = list(compiled.typed.result_types)
        for t in [*compiled.arg_types, *self.results]:
            if t.dtype not in _CTYPES:
                raise BackendError(f"FUSILE_TARGET=mlir-cpu does not take {t.dtype} yet "
                                   "(float32, float64, int32, int64 and bool); use the Triton "
                                   "interpreter (FUSILE_TARGET=auto) for it")
        self.context = ir.Context()
        with self.context:
            module = ir.Module.parse(str(compiled.stages.fused))
            func = next(op for op in module.body.operations
                        if op.operation.name == "func.func")
            self.name = ir.StringAttr(func.attributes["sym_name"]).value
            func.attributes["llvm.emit_c_interface"] = ir.UnitAttr.get()
            passmanager.PassManager.parse(_PIPELINE).run(module.operation)
            self.engine = ExecutionEngine(module, opt_level=3)
        fields = [(f"r{i}", _descriptor_type(len(t.shape), _CTYPES[t.dtype]))
                  for i, t in enumerate(self.results)]
        self.packed = type("Results", (ctypes.Structure,), {"_fields_": fields})

    def __call__(self, args: list[Any]) -> list[Any]:
        import torch

        out = self.packed()
        keep = [out]  # what the call's pointers point into lives until the call returns
        packed: list[Any] = []
        if len(self.results) == 1:
            packed.append(ctypes.pointer(ctypes.pointer(out.r0)))
        else:  # several results: one struct of descriptors
            packed.append(ctypes.pointer(ctypes.pointer(out)))
        for a, t in zip(args, self.compiled.arg_types, strict=True):
            ctype = _CTYPES[t.dtype]
            if isinstance(a, torch.Tensor):
                if a.device.type != "cpu":
                    raise BackendError(f"FUSILE_TARGET=mlir-cpu runs on CPU tensors, got one "
                                       f"on {a.device}")
                d = _descriptor_type(a.dim(), ctype)()
                d.allocated = d.offset = 0
                d.aligned = ctypes.cast(a.data_ptr(), ctypes.POINTER(ctype))
                if a.dim():
                    d.shape[:] = list(a.shape)
                    d.strides[:] = list(a.stride())
                keep.append(d)
                packed.append(ctypes.pointer(ctypes.pointer(d)))
            else:
                packed.append(ctypes.pointer(ctype(a)))
        self.engine.invoke(self.name, *packed)
        results = [_take(getattr(out, f"r{i}"), t) for i, t in enumerate(self.results)]
        return self.compiled.assemble(results)


def _take(d: Any, t: TensorType) -> Any:
    """A result buffer the function allocated, as a torch tensor (copied; the buffer freed)."""
    import torch

    from fusile.backends.torch_dtypes import to_torch

    dtype = to_torch(t.dtype)
    rank = len(t.shape)
    shape = list(d.shape) if rank else []
    strides = list(d.strides) if rank else []
    out = torch.empty(shape, dtype=dtype)
    if out.numel():
        size = torch.empty((), dtype=dtype).element_size()
        span = 1 + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
        base = ctypes.cast(d.aligned, ctypes.c_void_p).value or 0
        raw = (ctypes.c_byte * (span * size)).from_address(base + d.offset * size)
        flat = torch.frombuffer(raw, dtype=dtype, count=span)
        out.copy_(flat.as_strided(shape, strides))
    if d.allocated:
        _free(d.allocated)
    return out


def program_for(compiled: Any) -> MlirCpuProgram:
    program = compiled.programs.get("mlir-cpu")
    if program is None:
        program = compiled.programs["mlir-cpu"] = MlirCpuProgram(compiled)
    return program
