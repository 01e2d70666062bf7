"""A bounds-checked Triton interpreter: every masked load and store a kernel makes must land
inside the storage of a tensor it was launched with. On a GPU an out-of-bounds access is an
illegal-address fault (or, worse, a silent read of a neighbour's memory); the plain
interpreter reads host memory wherever the pointer says and carries on, so without this a CPU
test cannot see one.

Uses the interpreter's internals (InterpreterBuilder.create_masked_load/store and
GridExecutor._init_args_hst); `checked()` raises pytest.skip when they are not there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest


class OutOfBounds(AssertionError):
    pass


@contextlib.contextmanager
def checked() -> Iterator[list[str]]:
    """Within the block, interpreter launches fail with OutOfBounds on a stray access; yields
    the names of the kernels launched."""
    try:
        import triton.runtime.interpreter as interp

        builder, grid = interp.InterpreterBuilder, interp.GridExecutor
        load, store, init = (builder.create_masked_load, builder.create_masked_store,
                             grid._init_args_hst)
    except (ImportError, AttributeError) as err:
        pytest.skip(f"this Triton's interpreter has no hook for bounds checks: {err}")
    ranges: list[tuple[int, int]] = []
    launched: list[str] = []

    def check(ptrs: Any, mask: Any, what: str) -> None:
        p = np.asarray(ptrs.data).astype(np.uint64)
        m = np.asarray(mask.data).astype(bool)
        shape = np.broadcast_shapes(p.shape, m.shape)
        live = np.broadcast_to(p, shape)[np.broadcast_to(m, shape)]
        if not live.size:
            return
        ok = np.zeros(live.shape, bool)
        for lo, hi in ranges:
            ok |= (live >= lo) & (live < hi)
        if not ok.all():
            raise OutOfBounds(f"{launched[-1] if launched else '?'}: a masked {what} outside "
                              f"every argument's storage ({int((~ok).sum())} of {live.size} "
                              "lanes)")

    def masked_load(self: Any, ptrs: Any, mask: Any, *args: Any, **kw: Any) -> Any:
        check(ptrs, mask, "load")
        return load(self, ptrs, mask, *args, **kw)

    def masked_store(self: Any, ptrs: Any, value: Any, mask: Any, *args: Any, **kw: Any) -> Any:
        check(ptrs, mask, "store")
        return store(self, ptrs, value, mask, *args, **kw)

    def init_args(self: Any, args_dev: Any, kwargs: Any) -> Any:
        out = init(self, args_dev, kwargs)
        ranges.clear()
        for t in [*out[0], *out[1].values()]:
            if hasattr(t, "untyped_storage") and t.numel():
                s = t.untyped_storage()
                ranges.append((s.data_ptr(), s.data_ptr() + s.nbytes()))
        launched.append(getattr(self.fn, "__name__", str(self.fn)))
        return out

    builder.create_masked_load = masked_load
    builder.create_masked_store = masked_store
    grid._init_args_hst = init_args
    try:
        yield launched
    finally:
        builder.create_masked_load, builder.create_masked_store = load, store
        grid._init_args_hst = init
