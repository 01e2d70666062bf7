"""The CPU through MLIR itself (issue 23, a first step): `FUSILE_TARGET=mlir-cpu`.

The fused linalg-on-tensors module every backend reads (`compiled.stages.fused`) goes through
upstream MLIR passes (one-shot bufferization across the function boundary, linalg to loops,
then to the LLVM dialect) and MLIR's ExecutionEngine JIT-compiles it at -O3, once per compiled
signature. A call hands the torch tensors' storage to the function as memref descriptors
(no copies, strides honoured); each result comes back in a buffer the function allocated,
copied into a torch tensor and freed.

bf16 and f16 travel as 16-bit storage; arith-expand rewrites their conversions into integer
ops (the JIT links no runtime helpers for them) and the math runs in float32, as on the GPU.

What this step is not yet: the loops are scalar and run on one thread (no tiling,
vectorisation or OpenMP), and the default CPU target is still the Triton interpreter.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Any

from fusile.dsl.errors import BackendError
from fusile.dsl.types import DType, TensorType, bf16, bool_, f16, f32, f64, i32, i64

_PIPELINE = ("builtin.module(one-shot-bufferize{bufferize-function-boundaries},"
             "convert-linalg-to-loops,lower-affine,convert-scf-to-cf,convert-math-to-llvm,"
             "convert-math-to-libm,arith-expand{include-bf16=true},"
             "expand-strided-metadata,finalize-memref-to-llvm,convert-arith-to-llvm,"
             "convert-cf-to-llvm,convert-func-to-llvm,reconcile-unrealized-casts)")
_CTYPES: dict[DType, Any] = {f32: ctypes.c_float, f64: ctypes.c_double, i32: ctypes.c_int32,
                             i64: ctypes.c_int64, bool_: ctypes.c_bool, bf16: ctypes.c_uint16,
                             f16: ctypes.c_uint16}
# a memref over a constant global carries this in place of an allocation (MLIR's lowering of
# memref.get_global), so that freeing it can be told apart
_GLOBAL = 0xDEADBEEF
_free = ctypes.CDLL(None).free
_free.argtypes = [ctypes.c_void_p]


@functools.cache
def _descriptor(rank: int) -> Any:
    """A memref descriptor's C layout (MLIR's): both pointers as plain addresses."""
    fields = [("allocated", ctypes.c_void_p), ("aligned", ctypes.c_void_p),
              ("offset", ctypes.c_int64)]
    if rank:
        fields += [("shape", ctypes.c_int64 * rank), ("strides", ctypes.c_int64 * rank)]
    return type(f"Memref{rank}", (ctypes.Structure,), {"_fields_": fields})


class MlirCpuProgram:
    """One compiled signature, JIT-compiled for this CPU. A call fills argument slots made
    once (descriptors, scalars, the packed pointer array) and calls the function through its
    C interface: a few microseconds of ctypes, under a lock since the slots are shared."""

    def __init__(self, compiled: Any):
        from torch_mlir import ir, passmanager
        from torch_mlir.execution_engine import ExecutionEngine

        self.compiled = compiled
        self.results: list[TensorType] = list(compiled.typed.result_types)
        for t in [*compiled.arg_types, *self.results]:
            if t.dtype not in _CTYPES:
                raise BackendError(f"FUSILE_TARGET=mlir-cpu does not take {t.dtype} yet; use "
                                   "the Triton interpreter (FUSILE_TARGET=auto) for it")
        self.context = ir.Context()
        with self.context:
            module = ir.Module.parse(str(compiled.stages.fused))
            func = next(op for op in module.body.operations
                        if op.operation.name == "func.func")
            name = ir.StringAttr(func.attributes["sym_name"]).value
            func.attributes["llvm.emit_c_interface"] = ir.UnitAttr.get()
            passmanager.PassManager.parse(_PIPELINE).run(module.operation)
            self.engine = ExecutionEngine(module, opt_level=3)
            self.function = self.engine.lookup(name)
        # the argument slots: results first (one descriptor, or a struct of them), then one
        # per argument; `packed` holds the address of each slot's pointer (or scalar)
        fields = [(f"r{i}", _descriptor(len(t.shape))) for i, t in enumerate(self.results)]
        self.out = type("Results", (ctypes.Structure,), {"_fields_": fields})()
        self.slots: list[Any] = [self.out.r0 if len(fields) == 1 else self.out]
        for t in compiled.arg_types:
            self.slots.append(_descriptor(len(t.shape))() if isinstance(t, TensorType) else
                              _CTYPES[t.dtype]())
        self.holders = [ctypes.c_void_p(ctypes.addressof(slot)) for slot in self.slots]
        self.packed = (ctypes.c_void_p * len(self.slots))()
        for i, (t, slot) in enumerate(zip([None, *compiled.arg_types], self.slots,
                                          strict=True)):
            scalar = t is not None and not isinstance(t, TensorType)
            self.packed[i] = ctypes.addressof(slot if scalar else self.holders[i])
        self.lock = threading.Lock()

    def __call__(self, args: list[Any]) -> list[Any]:
        import torch

        with self.lock:
            for a, slot in zip(args, self.slots[1:], strict=True):
                if isinstance(a, torch.Tensor):
                    if a.device.type != "cpu":
                        raise BackendError("FUSILE_TARGET=mlir-cpu runs on CPU tensors, got "
                                           f"one on {a.device}")
                    slot.aligned = a.data_ptr()
                    if a.dim():
                        slot.shape[:] = a.shape
                        slot.strides[:] = a.stride()
                else:
                    slot.value = a
            self.function(self.packed)
            descs = [getattr(self.out, f"r{i}") for i in range(len(self.results))]
            results = [_take(d, t) for d, t in zip(descs, self.results, strict=True)]
            freed: set[int] = set()
            for d in descs:  # each buffer the function allocated, once; never a constant's
                if d.allocated and d.allocated != _GLOBAL and d.allocated not in freed:
                    freed.add(d.allocated)
                    _free(d.allocated)
        return self.compiled.assemble(results)


def _take(d: Any, t: TensorType) -> Any:
    """A result buffer the function made, as a torch tensor (copied)."""
    import torch

    from fusile.backends.torch_dtypes import to_torch

    dtype = to_torch(t.dtype)
    rank = len(t.shape)
    shape = list(d.shape) if rank else []
    strides = list(d.strides) if rank else []
    out = torch.empty(shape, dtype=dtype)
    if out.numel():
        size = out.element_size()
        start = (d.aligned or 0) + d.offset * size
        if strides == list(out.stride()):
            ctypes.memmove(out.data_ptr(), start, out.numel() * size)
        else:
            span = 1 + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
            raw = (ctypes.c_byte * (span * size)).from_address(start)
            out.copy_(torch.frombuffer(raw, dtype=dtype, count=span).as_strided(shape,
                                                                                strides))
    return out
