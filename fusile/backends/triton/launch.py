"""How a kernel is launched: Triton's compile options fusile always sets, the direct launch of
a compiled kernel, and the interpreter's one-at-a-time rule. What each kind launches with is
its own (kinds/)."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

from fusile import config

# The Triton interpreter keeps global state while it runs a kernel (the grid index, patched
# triton.language functions): one interpreted program at a time.
_INTERPRETER_LOCK = threading.Lock()


@contextlib.contextmanager
def interpreting() -> Iterator[None]:
    """One interpreted program at a time, with numpy's floating-point warnings off: inf and
    NaN are values here as on a GPU (log(0) is -inf), not something to warn the user of
    (nor is a max over a row of NaNs, which numpy's nanmax, the interpreter's max, warns of)."""
    import warnings

    import numpy as np

    _round_bf16_in_the_interpreter()
    _trap_integer_division_by_zero()
    with _INTERPRETER_LOCK, np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN (slice|axis) encountered", RuntimeWarning)
        yield


@functools.cache
def _round_bf16_in_the_interpreter() -> None:
    """The Triton interpreter casts float32 to bf16 by truncation (its cast_impl passes no
    rounding mode), where GPUs and torch round to nearest even: every bf16 result came out
    up to an ulp toward zero; and it cast integers to bf16 by their bits. Wrap its cast once,
    where its builder has the shape known here (a Triton that changed it keeps its own)."""
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter as itp

        builder, handle, original = (itp.InterpreterBuilder, itp.TensorHandle,
                                     itp.InterpreterBuilder.cast_impl)
    except (ImportError, AttributeError):
        return

    def cast_impl(self: Any, src: Any, dst_type: Any) -> Any:
        s = src.dtype.scalar
        if dst_type.scalar == tl.bfloat16 and (s == tl.float32 or s.is_int() or s.is_bool()):
            # integers too: the interpreter's own int -> bf16 cast reinterpreted the bits
            # (1 became 9.2e-41)
            f = np.asarray(src.data).astype(np.float32)
            bits = f.view(np.uint32)
            up = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))  # ties to even
            out = ((bits + up) >> np.uint32(16)).astype(np.uint16)
            return handle(np.where(np.isnan(f), np.uint16(0x7FC0), out), dst_type.scalar)
        return original(self, src, dst_type)

    builder.cast_impl = cast_impl


@functools.cache
def _trap_integer_division_by_zero() -> None:
    """An integer division or remainder by zero is garbage on a GPU (no trap) and numpy's 0
    here, silenced with the float warnings. Of a program-level scalar it poisons every
    offset a program computes (a pointwise kernel over empty rows once divided its program
    id by 0 blocks, and the garbage offset passed its mask: an illegal address), so the
    interpreter raises on it and the CPU tests see it. A tile's division by an empty axis's
    size (unflattening the row index over empty rows) is left alone: every lane it feeds is
    masked off by the offsets' own bounds check."""
    try:
        import numpy as np
        from triton.runtime import interpreter as itp

        builder = itp.InterpreterBuilder
        wrapped = {name: getattr(builder, name)
                   for name in ("create_idiv", "create_srem", "create_urem")}
    except (ImportError, AttributeError):
        return

    def trap(name: str, original: Any) -> Any:
        def op(self: Any, lhs: Any, rhs: Any) -> Any:
            data, left = np.asarray(rhs.data), np.asarray(lhs.data)
            if data.dtype.kind in "iu" and left.ndim <= 1 and left.size == 1 and \
                    not data.all():
                what = "division" if name == "create_idiv" else "remainder"
                raise ZeroDivisionError(f"integer {what} by zero in a kernel (garbage on a "
                                        f"GPU, where nothing traps it)")
            return original(self, lhs, rhs)
        return op

    for name, original in wrapped.items():
        setattr(builder, name, trap(name, original))


# Triton's default (a * b + c contracts to one fma), said explicitly: Triton 3.9 warns on
# every compile that leaves it unset
FP_FUSION = {"enable_fp_fusion": True}


def launch_compiled(kernel: Any, grid: tuple[int, ...], device: Any, args: tuple) -> None:
    """Launch a Triton CompiledKernel with all its arguments, constexprs included, as
    JITFunction.run does after binding them (launch metadata only for an installed hook)."""
    from triton import knobs

    stream = current_stream(device.index)
    if hooks_active():
        enter, exit_ = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
        meta = kernel.launch_metadata(grid, stream, *args)
    else:
        enter = exit_ = meta = None
    kernel.run(grid[0], grid[1] if len(grid) > 1 else 1, 1, stream, kernel.function,
               kernel.packed_metadata, meta, enter, exit_, *args)


def direct_launcher(kernel: Any) -> tuple[Any, tuple, bool] | None:
    """How to launch a CompiledKernel without the JIT: (f, head, addresses), called as
    `f(gridX, gridY, gridZ, stream, *head, *args)`, where `addresses` says that pointer
    arguments may be given as ints (the data_ptr of a CUDA tensor on the launch's device,
    which skips the C launcher's per-pointer data_ptr call and cuPointerGetAttribute check).
    Triton 3.6's C launch where calling it is all its launcher object would do (c_launch;
    with FUSILE_FAST_REPLAY=1 until it has run on a GPU); else the launcher object with no
    launch metadata (hooks: launch_compiled). None for anything else (a stand-in, or a
    Triton whose CompiledKernel has changed)."""
    try:
        run, function, meta = kernel.run, kernel.function, kernel.packed_metadata
    except AttributeError:
        return None
    c = c_launch(run) if _c_launch_on() else None
    if c is not None:
        launch, coop, pdl = c
        return launch, (function, coop, pdl, None, None, meta, None, None, None), True
    return run, (function, meta, None, None, None), False


def _c_launch_on() -> bool:
    return bool(config.get("fast_replay"))


def c_launch(launcher: Any) -> tuple[Any, Any, Any] | None:
    """(C launch, cooperative-grid flag, PDL flag) of a Triton 3.6 CudaLauncher whose kernel
    needs no scratch memory: there its `__call__(gridX, gridY, gridZ, stream, function,
    *args)` only allocates the two scratch buffers (None at size 0) and calls
    `launch(gridX, gridY, gridZ, stream, function, cooperative, pdl, global_scratch,
    profile_scratch, *args)`, a compiled C function. Calling that directly saves the
    object's Python frame and two closures (about 1-2 us a launch). None for any other form
    (Triton 3.9's launcher takes its arguments differently; HIP's; a kernel with scratch):
    those launch through the object, as before."""
    cls = type(launcher)
    code = getattr(cls.__dict__.get("__call__"), "__code__", None)
    if cls.__name__ != "CudaLauncher" or code is None or code.co_argcount != 6 or \
            code.co_varnames[:6] != ("self", "gridX", "gridY", "gridZ", "stream", "function"):
        return None
    try:
        if launcher.global_scratch_size or launcher.profile_scratch_size or \
                getattr(launcher, "gsan_enabled", False):
            return None
        return launcher.launch, launcher.launch_cooperative_grid, launcher.launch_pdl
    except AttributeError:
        return None


def hooks_active() -> bool:
    """Whether a launch hook is installed (the profiler's, proton's): then launches carry
    their metadata. Triton 3.4+ keeps the hooks as chains, empty by default; older ones as
    None or a function."""
    global _runtime_knobs
    if _runtime_knobs is None:
        from triton import knobs

        _runtime_knobs = knobs.runtime
    r = _runtime_knobs
    return _active(r.launch_enter_hook) or _active(r.launch_exit_hook)


def _active(hook: Any) -> bool:
    return hook is not None and bool(getattr(hook, "calls", True))


_runtime_knobs: Any = None


def current_stream(index: int) -> Any:
    """The raw current CUDA/HIP stream of device `index` (what Triton's driver returns)."""
    global _raw_stream
    if _raw_stream is None:
        import torch

        _raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        if _raw_stream is None:  # a torch without it: Triton's own (slower) query
            from triton.runtime.driver import driver

            _raw_stream = driver.active.get_current_stream
    return _raw_stream(index)


_raw_stream: Any = None
