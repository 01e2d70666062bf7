"""Programs the property tests found failing, kept as plain regression tests."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import fusile
from fusile import config
from tests.property.programs import Program
from tests.property.tolerance import check

FOUND = [
    # a reduction over a size-1 axis is elementwise, not a reduction of the tile's columns
    ("def prog(x0):\n    t4 = sum(x0, axis=0, keepdims=False)\n    return t4\n", [(1, 2)], 0),
    # (1, 2, 1) + (1, 2) broadcasts to (1, 2, 2): one size class on two loops of one op
    ("def prog(x0):\n    t3 = sum(x0, axis=-1, keepdims=False)\n    t4 = x0 + t3\n"
     "    return t4\n", [(1, 2, 1)], 0),
    # looped kernel: a full reduction next to an op over another axis (found on CUDA)
    ("def prog(x0, x1):\n    t0 = sum(x0, axis=0, keepdims=False)\n    t1 = exp(x1)\n"
     "    return t1, t0\n", [(257, 1), (257, 1)], 0),
    ("def prog(x0, x1):\n    t0 = sum(x0, axis=0, keepdims=False)\n    t1 = exp(x1)\n"
     "    return t1, t0\n", [(257, 1), (257, 1)], 64),
    # a sum of a negation: canonicalize folds acc + (-x) into acc - x, which no reduction
    # combiner was (a BackendError); whole rows, looped rows and split columns
    ("def prog(x0):\n    t3 = -x0\n    t4 = sum(t3, axis=1, keepdims=False)\n    return t4\n",
     [(1000, 2, 1)], 0),
    ("def prog(x0):\n    return sum(1.0 - x0, axis=-1), mean(-x0, axis=0)\n", [(31, 1031)], 256),
    ("def prog(x0):\n    return sum(-x0, axis=0)\n", [(3000, 3)], 0),
    # one tensor as both K and V ties the head dim to the value dim: the flash writer, which
    # tiles them apart, raised 'an attention kernel stores a per-key tensor'
    ("def prog(x0, x1):\n    return softmax(x0 @ x1.T, axis=-1) @ x1\n", [(2, 5, 8), (2, 37, 8)],
     0),
    # a product over a keepdims reduction's size-1 axis: no operand's map named the K loop,
    # and MLIR's verifier refused the generic (an internal error; found by the deep profile)
    ("def prog(x0, x1):\n    t0 = sum(x0, axis=1, keepdims=True)\n    t3 = t0 @ t0.mT\n"
     "    return t3\n", [(1, 1), (1, 1)], 0),
    ("def prog(x0, x1):\n    t0 = sum(x0, axis=1, keepdims=True)\n"
     "    return t0 @ x1, x1.mT @ t0.mT\n", [(5, 3), (1, 4)], 0),
    # a batched x @ x.mT summed over its rows (m), which sizes alone do not tell from its
    # columns (n) or its batch: dot-rows took it and failed to store a per-column result
    ("def prog(x0, x1, x2):\n    t3 = x1 @ x1.mT\n    t4 = sum(t3, axis=1, keepdims=False)\n"
     "    return t4\n", [(1, 1, 1), (2, 2, 2), (1,)], 0),
    ("def prog(x1):\n    t3 = x1 @ x1.mT\n    return sum(t3, axis=2), sum(t3, axis=0)\n",
     [(2, 2, 2)], 0),
]


@pytest.mark.parametrize("src,shapes,block", FOUND)
def test_found_by_hypothesis(src: str, shapes: list[tuple[int, ...]], block: int) -> None:
    p = Program(src, shapes, [torch.float32] * len(shapes), 4.0, 257, block)
    fn = fusile.from_source(src)
    args = p.inputs()
    with config.override(max_row_block=block):
        out = fn(*args)
    outs = out if isinstance(out, tuple) else (out,)
    ref = fn.reference(*args)
    refs = ref if isinstance(ref, tuple) else (ref,)
    for o, r in zip(outs, refs, strict=True):
        check(o, torch.from_numpy(r), p.bound, p.reduced)


# rows of 31 halves are not 16-byte multiples: scalar loads, 16 per thread of a 2-warp tile,
# took 80 registers and spilled on sm_90 (a pointwise x0 + x1, found by the dev profile)
SPILLED = [("def prog(x0, x1):\n    t0 = x0 + x1\n    return t0\n", [(1, 13, 1), (2, 13, 31)]),
           ("def prog(x0, x1):\n    t0 = x0 + x1\n    return t0\n", [(1, 13, 1), (3, 13, 31)]),
           # one row of 1000 halves: the row's end is no multiple of 16, so 16 per thread were
           # 16 predicated loads, and the predicates spilled (found by the dev profile, seed 17)
           ("def prog(x0):\n    t0 = exp(x0)\n    t1 = where(t0 < x0, t0, x0 * 0.5)\n"
            "    return t1\n", [(1000,)]),
           # contractions over K = 7 and 100 halves (rows no 16-byte multiple, loads not
           # vectorized): the 128x64x64 4-stage pick took 255 registers and spilled 672 bytes
           ("def prog(x0, x1):\n    return x0 @ x1.mT\n", [(512, 100), (512, 100)]),
           ("def prog(x0, x1):\n    return x0 @ x1.mT\n", [(3, 5, 7), (3, 5, 7)]),
           ("def prog(x0, x1):\n    return x0 @ x1\n", [(512, 100), (100, 512)]),
           # a product over K = 2 with an operand computed on its tile (exp): every candidate,
           # 16 to 64 deep over 3-4 stages, spilled 1776 bytes at 255 registers (the first
           # random programs with matmuls, 2026-12-08)
           ("def prog(x0):\n    t0 = exp(x0)\n    return t0 @ x0.mT, t0\n", [(2, 2)]),
           ("def prog(x0):\n    t0 = exp(x0)\n    return x0 @ t0.mT\n", [(1, 2, 31)])]


@pytest.mark.parametrize("target", ["h100", "mi300x"])
@pytest.mark.parametrize("src,shapes", SPILLED)
def test_found_spilling(src: str, shapes: list[tuple[int, ...]], target: str) -> None:
    from fusile import f16, f32

    fn = fusile.from_source(src)
    for dtype in (f16, f32):
        art = fn.compile(target, **{f"x{i}": dtype[s] for i, s in enumerate(shapes)})
        for k in art.kernels:
            assert k.spills == 0, (dtype, k.summary())


# found by a dev-profile run of the sliced-program property (2026-12-07)
STACKED = [
    # sum over a stack's axis of size-1 pieces was a parallel generic reading its init: fused
    # into the wider `x0 + t2`, mlir-cpu applied it once per column (interpreter: right)
    ("def prog(x0):\n    t1 = stack([x0, x0], axis=1)\n    t2 = sum(t1, axis=1, keepdims=True)\n"
     "    t5 = x0 + t2\n    return t5\n",
     lambda x: x + torch.stack([x, x], 1).sum(1, keepdim=True)),
    # exp(x0) read as t0[j] and t0[i] by one generic: recomputed there it tied i to j, and the
    # partition crashed (StopIteration) instead of reading it
    ("def prog(x0):\n    t0 = exp(x0)\n    t1 = stack([x0, t0], axis=1)\n"
     "    t2 = sum(t1, axis=1, keepdims=True)\n    t5 = t0 + t2\n    return t5\n",
     lambda x: torch.exp(x) + torch.stack([x, torch.exp(x)], 1).sum(1, keepdim=True)),
]


@pytest.mark.parametrize("target", ["cpu", "mlir-cpu"])
@pytest.mark.parametrize("src,ref", STACKED)
def test_found_with_stacks(src: str, ref: Any, target: str) -> None:
    fn = fusile.from_source(src)
    for n in (2, 5):
        x = torch.randn(n, dtype=torch.float64)
        with config.override(target=target):
            out = fn(x)
        assert torch.allclose(out, ref(x), rtol=1e-12, atol=1e-12), (n, out, ref(x))


def test_a_reduction_cut_at_a_stacks_seams_is_a_located_error() -> None:
    """stack([x, x], 1) + softmax(x, 0): the softmax runs along the stack's axis, so it would
    be cut at the seams; the message says so (it said 'slicing this value')."""
    fn = fusile.from_source("def prog(x0):\n    t1 = stack([x0, x0], axis=1)\n"
                            "    return t1 + softmax(x0, axis=0)\n", filename="s.py")
    with pytest.raises(fusile.FusileError, match="meets a concat or stack") as info:
        fn(torch.randn(2))
    assert "s.py:3" in str(info.value)
