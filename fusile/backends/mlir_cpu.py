"""The CPU through MLIR itself (issue 23): `FUSILE_TARGET=mlir-cpu`.

The fused linalg-on-tensors module every backend reads (`compiled.stages.fused`) is rewritten
so that LLVM can vectorise it (backends/cpu_math.py: reassociable float arithmetic, float32
exp as arithmetic), goes through upstream MLIR passes (one-shot bufferization across the
function boundary, linalg to loops, then to the LLVM dialect) and MLIR's ExecutionEngine
JIT-compiles it at -O3 for this CPU, once per compiled signature. A call hands the torch
tensors' storage to the function as memref descriptors (no copies, strides honoured). A
result computed into a fresh tensor is computed into the torch tensor the call returns
(backends/cpu_outs.py); any other comes back in a buffer the function allocated, copied into
a torch tensor and freed.

Threads and cache: the loops MLIR writes run on one thread, one whole pass over the data
after another. Where the program is row-separable (lowering/row_blocks.py) a large call
runs instead as blocks of rows, each small enough that the program's passes over it hit
cache, taken by up to `config.cpu_threads` threads (the JIT's code runs without the GIL).

bf16 and f16 travel as 16-bit storage; arith-expand rewrites their conversions into integer
ops (the JIT links no runtime helpers for them) and the math runs in float32, as on the GPU.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fusile.backends.cpu_math import vectorisable
from fusile.backends.cpu_outs import destination_results, result_dims
from fusile.backends.targets import cpu_threads
from fusile.backends.torch_dtypes import to_torch
from fusile.dsl.errors import BackendError
from fusile.dsl.types import DType, TensorType, bf16, bool_, f16, f32, f64, i32, i64
from fusile.lowering.row_blocks import row_split

_BUFFERIZE = "builtin.module(one-shot-bufferize{bufferize-function-boundaries})"
_PIPELINE = ("builtin.module(convert-linalg-to-loops,lower-affine,convert-scf-to-cf,"
             "convert-math-to-llvm,"
             "convert-math-to-libm,arith-expand{include-bf16=true},"
             "expand-strided-metadata,finalize-memref-to-llvm,convert-arith-to-llvm,"
             "convert-cf-to-llvm,convert-func-to-llvm,reconcile-unrealized-casts)")
_EXPAND = "builtin.module(func.func(math-expand-ops))"  # tanh & co. in terms of exp
# a block's arguments and results: about a typical L2. Larger than 512 KiB pays back the
# ~50 us each block costs in Python and malloc (4096x4096 softmax, rms_norm and swiglu were
# 10-25% faster here at 1 MiB)
_BLOCK_BYTES = 1 << 20
_THREAD_BYTES = 1 << 21  # a call that moves less runs on the calling thread only
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


def takes(compiled: Any) -> bool:
    """Whether every argument and result has a dtype this backend passes."""
    return all(t.dtype in _CTYPES for t in [*compiled.arg_types, *compiled.typed.result_types])


class _Slots:
    """One set of argument slots for the function's C interface: results first (one
    descriptor, or a struct of them), then one per argument; `packed` holds the address of
    each slot's pointer (or scalar). Made once; a call only writes into them, so a set serves
    one call at a time (each block thread takes its own)."""

    def __init__(self, arg_types: list[Any], results: list[TensorType]):
        fields = [(f"r{i}", _descriptor(len(t.shape))) for i, t in enumerate(results)]
        self.out = type("Results", (ctypes.Structure,), {"_fields_": fields})()
        self.descs = [getattr(self.out, f"r{i}") for i in range(len(results))]
        self.slots: list[Any] = [self.descs[0] if len(fields) == 1 else self.out]
        for t in arg_types:
            self.slots.append(_descriptor(len(t.shape))() if isinstance(t, TensorType) else
                              _CTYPES[t.dtype]())
        self.kinds = [(to_torch(t.dtype), len(t.shape)) for t in results]
        self.holders = [ctypes.c_void_p(ctypes.addressof(slot)) for slot in self.slots]
        self.packed = (ctypes.c_void_p * len(self.slots))()
        for i, (t, slot) in enumerate(zip([None, *arg_types], self.slots, strict=True)):
            scalar = t is not None and not isinstance(t, TensorType)
            self.packed[i] = ctypes.addressof(slot if scalar else self.holders[i])

    def run(self, function: Any, args: list[Any], into: list[Any] | None = None) -> list[Any]:
        """Call the function (ctypes lets go of the GIL meanwhile); its results copied into
        `into` (views of the call's outputs) or into new tensors, and its buffers freed."""
        import torch

        for a, slot in zip(args, self.slots[1:], strict=True):
            if isinstance(a, torch.Tensor):
                slot.aligned = a.data_ptr()
                if a.dim():
                    slot.shape[:] = a.shape
                    slot.strides[:] = a.stride()
            else:
                slot.value = a
        function(self.packed)
        outs = [_take(d, t, None if into is None else into[i])
                for i, (d, t) in enumerate(zip(self.descs, self.kinds, strict=True))]
        freed: set[int] = set()
        for d in self.descs:  # each buffer the function allocated, once; never a constant's
            if d.allocated and d.allocated != _GLOBAL and d.allocated not in freed:
                freed.add(d.allocated)
                _free(d.allocated)
        return outs


class _StridedCopy(Exception):
    """Bufferization copied into a strided buffer: MLIR lowers that copy to a call of the
    memrefCopy runtime, which this JIT does not link (LLVM printed "JIT session error:
    Symbols not found: [ memrefCopy ]" on stderr before the engine failed)."""


def _strided_copy(op: Any) -> bool:
    """Whether op holds a memref.copy whose source or target has a non-identity layout (an
    identity copy lowers to memcpy)."""
    for region in op.regions:
        for block in region.blocks:
            for inner in block.operations:
                inner = inner.operation
                if inner.name == "memref.copy" and any(
                        "strided" in str(v.type) for v in inner.operands):
                    return True
                if _strided_copy(inner):
                    return True
    return False


class MlirCpuProgram:
    """One compiled signature, JIT-compiled for this CPU. A row-separable program
    (lowering/row_blocks.py) on a large input runs as blocks of rows of about _BLOCK_BYTES,
    so that the program's passes over a block find it in cache, on up to
    `config.cpu_threads` threads; any other call is one call of the function."""

    def __init__(self, compiled: Any):
        self.compiled = compiled
        self.results: list[TensorType] = list(compiled.typed.result_types)
        self.arg_types: list[Any] = list(compiled.arg_types)
        if not takes(compiled):
            bad = next(t.dtype for t in [*self.arg_types, *self.results]
                       if t.dtype not in _CTYPES)
            raise BackendError(f"FUSILE_TARGET=mlir-cpu does not take {bad} yet; use the "
                               "Triton interpreter (FUSILE_TARGET=cpu) for it")
        self.dims = result_dims(compiled.fused_graph)
        try:
            self._jit([d is not None for d in self.dims])
        except (_StridedCopy, RuntimeError):  # a copy bufferization added for a result
            # written in place needs the memrefCopy runtime, which the JIT does not link:
            # results come back
            self._jit([False] * len(self.dims))
        # the function's arguments: the program's, then one per result it writes in place
        self.slot_types = self.arg_types + [t for t, d in zip(self.results, self.dests,
                                                                strict=True) if d]
        self.split = row_split(compiled.fused_graph) if all(self.dests) else None
        self.free = [_Slots(self.slot_types, self.results)]
        self.kinds = self.free[0].kinds
        self.lock = threading.Lock()

    def _jit(self, allowed: list[bool]) -> None:
        """Compile the function, writing the `allowed` results it can into arguments."""
        from torch_mlir import ir, passmanager
        from torch_mlir.execution_engine import ExecutionEngine

        self.context = ir.Context()
        with self.context:
            module = ir.Module.parse(str(self.compiled.stages.fused))
            func = next(op for op in module.body.operations
                        if op.operation.name == "func.func")
            name = ir.StringAttr(func.attributes["sym_name"]).value
            func.attributes["llvm.emit_c_interface"] = ir.UnitAttr.get()
            self.dests = destination_results(module, allowed)
            passmanager.PassManager.parse(_EXPAND).run(module.operation)
            vectorisable(module)
            passmanager.PassManager.parse(_BUFFERIZE).run(module.operation)
            if any(allowed) and _strided_copy(module.operation):
                raise _StridedCopy
            passmanager.PassManager.parse(_PIPELINE).run(module.operation)
            self.engine = ExecutionEngine(module, opt_level=3)
            self.function = self.engine.lookup(name)

    def _slots(self) -> _Slots:
        with self.lock:
            return self.free.pop() if self.free else _Slots(self.slot_types, self.results)

    def _outs(self, args: list[Any]) -> list[Any]:
        """Per result, the tensor the function writes it into (None: it allocates it)."""
        import torch

        return [torch.empty([s if isinstance(s, int) else args[s[0]].shape[s[1]]
                             for s in dims], dtype=kind[0]) if dest and dims is not None
                else None for dest, dims, kind in zip(self.dests, self.dims, self.kinds,
                                                      strict=True)]

    def __call__(self, args: list[Any]) -> list[Any]:
        import torch

        for a in args:
            if isinstance(a, torch.Tensor) and not a.is_cpu:
                raise BackendError("FUSILE_TARGET=mlir-cpu runs on CPU tensors, got one on "
                                   f"{a.device}")
        blocks = self._blocks(args)
        slots = self._slots()
        try:
            if blocks is None:
                outs = self._outs(args)
                return self.compiled.assemble(slots.run(
                    self.function, [*args, *(o for o in outs if o is not None)], outs))
            return self.compiled.assemble(self._run_blocks(slots, args, *blocks))
        finally:
            with self.lock:
                self.free.append(slots)

    def _blocks(self, args: list[Any]) -> tuple[int, int, int] | None:
        """(rows, rows per block, threads) when the call is worth splitting, else None."""
        if self.split is None:
            return None
        split = [(a, ax) for a, ax in zip(args, self.split.args, strict=True) if ax is not None]
        total = 2 * sum(a.numel() * a.element_size() for a, _ in split)
        if total <= min(_BLOCK_BYTES, _THREAD_BYTES):
            return None  # one block on one thread: the common small call stops here
        rows = split[0][0].shape[split[0][1]]
        if any(a.shape[ax] != rows for a, ax in split) or rows < 2:
            return None
        row_bytes = max(total // rows, 1)
        per_block = max(1, _BLOCK_BYTES // row_bytes)
        threads = cpu_threads()
        if per_block >= rows and (threads == 1 or total < _THREAD_BYTES):
            return None
        per_block = min(per_block, -(-rows // threads))
        return rows, per_block, threads

    def _run_blocks(self, slots: _Slots, args: list[Any], rows: int, per_block: int,
                    threads: int) -> list[Any]:
        """Blocks of rows, each computed straight into its rows of the results."""
        split = self.split
        assert split is not None
        outs = self._outs(args)
        starts = iter(range(0, rows, per_block))

        def work(mine: _Slots) -> None:
            for a in starts:  # shared: each block is taken by one thread
                n = min(per_block, rows - a)
                ins = [x.narrow(ax, a, n) if ax is not None else x
                       for x, ax in zip(args, split.args, strict=True)]
                into = [o.narrow(ax, a, n) for o, ax in zip(outs, split.results, strict=True)]
                mine.run(self.function, [*ins, *into], into)

        def helper() -> None:
            mine = self._slots()
            try:
                work(mine)
            finally:
                with self.lock:
                    self.free.append(mine)

        helpers = [_pool().submit(helper) for _ in range(threads - 1)]
        work(slots)
        for h in helpers:  # the blocks are all taken: a helper not yet started never need
            if not h.cancel():
                h.result()
        return outs


_POOL: list[tuple[int, ThreadPoolExecutor]] = []


def _pool() -> ThreadPoolExecutor:
    """The block threads, made again in a forked child (a DataLoader worker, say), where the
    parent's threads do not exist."""
    if not _POOL or _POOL[-1][0] != os.getpid():
        _POOL[:] = [(os.getpid(), ThreadPoolExecutor(
            max_workers=max(1, (os.cpu_count() or 2) - 1), thread_name_prefix="fusile-cpu"))]
    return _POOL[-1][1]


def _take(d: Any, kind: tuple[Any, int], into: Any = None) -> Any:
    """A result buffer the function made, copied into `into` or into a new tensor."""
    import torch

    if into is not None and d.aligned == into.data_ptr() and not d.offset:
        return into  # computed in place (cpu_outs.py)
    dtype, rank = kind
    shape = d.shape[:] if rank else []
    strides = tuple(d.strides[:]) if rank else ()
    out = torch.empty(shape, dtype=dtype) if into is None else into
    if out.numel():
        size = out.element_size()
        start = (d.aligned or 0) + d.offset * size
        if strides == out.stride() and (into is None or out.is_contiguous()):
            ctypes.memmove(out.data_ptr(), start, out.numel() * size)
        else:
            span = 1 + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
            raw = (ctypes.c_byte * (span * size)).from_address(start)
            out.copy_(torch.frombuffer(raw, dtype=dtype, count=span).as_strided(shape,
                                                                                strides))
    return out
