"""Programs the property tests found failing, kept as plain regression tests."""

from __future__ import annotations

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
           ("def prog(x0, x1):\n    t0 = x0 + x1\n    return t0\n", [(1, 13, 1), (3, 13, 31)])]


@pytest.mark.parametrize("target", ["h100", "mi300x"])
@pytest.mark.parametrize("src,shapes", SPILLED)
def test_found_spilling(src: str, shapes: list[tuple[int, ...]], target: str) -> None:
    from fusile import f16

    fn = fusile.from_source(src)
    art = fn.compile(target, **{f"x{i}": f16[s] for i, s in enumerate(shapes)})
    for k in art.kernels:
        assert k.spills == 0, k.summary()
