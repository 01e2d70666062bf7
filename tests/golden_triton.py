"""Hashes of the Triton fusile generates, for refactors that must not change it (issue 17).

    python -m tests.golden_triton --write golden.json   # before the change
    python -m tests.golden_triton --check golden.json   # after: exit 1 and the names if any differ

The workload runs, on CPU tensors and the interpreter, every sample program forward and
backward (float32 and bfloat16), an integer matmul, every stdlib op forward and backward with
its variants (norms, softmaxes, cross-entropy reductions and smoothing, activations, rope
conventions and partial rotary, attention: causal, window, softcap, ALiBi, GQA, decode,
per-sequence cache lengths and split keys) and a user function's derived backward. Each program
the runtime generates is also generated for the GPU family (what h100, h200 and mi300x compile;
their source does not depend on the target, only their launch configs do) with tf32 off and
on, and every source is hashed.
The result is, for each flavour, the sorted list of (the first kernel's docstring: its kind
and the user's lines it fuses, sha256). The launch decisions are hashed too ("launch/<target>":
every kind's tuning candidates, flash-decoding split counts, constexprs and compile options,
and the row schedule, over a grid of shapes), for refactors of the launch path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Callable
from typing import Any


def _record() -> tuple[dict[str, set[tuple[str, str]]], Callable[[], None]]:
    from fusile.backends.triton import generate as gen
    from fusile.backends.triton import runtime

    seen: dict[str, set[tuple[str, str]]] = {}
    original = gen.generate

    def generate(plan: Any, family: str, names: Any, tf32: bool = False) -> Any:
        for fam in ("interpreter", "gpu"):
            for t in (False, True):
                src = original(plan, fam, names, t)[0]
                doc = re.search(r'^    """(.*)"""$', src, re.M)  # the first kernel's lines
                first = doc.group(1) if doc else "-"
                seen.setdefault(f"{fam}/tf32={t}", set()).add(
                    (first, hashlib.sha256(src.encode()).hexdigest()))
        return original(plan, family, names, tf32)

    # the generator's module, and any module that imported it by name (older trees' runtime)
    users = [m for m in (gen, runtime) if getattr(m, "generate", None) is original]
    for m in users:
        m.generate = generate  # type: ignore[attr-defined]

    def restore() -> None:
        for m in users:
            m.generate = original  # type: ignore[attr-defined]

    return seen, restore


def _backward(out: Any, inputs: list[Any]) -> None:
    import torch

    outs = [o for o in (out if isinstance(out, tuple) else (out,))
            if o.dtype.is_floating_point and o.requires_grad]
    torch.autograd.backward(outs, [torch.randn_like(o) for o in outs])
    for x in inputs:
        x.grad = None


def workload() -> None:
    import torch

    import fusile.samples as smp
    import fusile.stdlib as S
    from fusile import config, fused, mean, rsqrt

    torch.manual_seed(0)

    def r(*shape: int, dtype: torch.dtype = torch.float32, grad: bool = True) -> torch.Tensor:
        return torch.randn(shape, dtype=dtype).requires_grad_(grad)

    samples: dict[str, list[tuple[int, ...]]] = {
               "layer_norm": [(5, 9), (9,), (9,)], "rms_norm": [(5, 9), (9,)],
               "add_rms_norm": [(5, 9), (5, 9), (9,)], "softmax_last": [(5, 9)],
               "softmax_by_hand": [(5, 9)], "log_softmax_last": [(5, 9)], "lse": [(5, 9)],
               "gelu_bias": [(5, 9), (9,)], "gelu_tanh": [(5, 9)], "swiglu": [(5, 9), (5, 9)],
               "colsum_scale": [(5, 9)], "linear_bias": [(5, 8), (8, 6), (6,)],
               "linear_t_gelu": [(5, 8), (6, 8), (6,)], "causal_scores": [(6, 6)],
               "variance": [(5, 9)], "attention_plain": [(5, 8), (7, 8), (7, 4)],
               "relu_sq_bf16": [(5, 9)]}
    for name, shapes in samples.items():
        for dtype in (torch.float32, torch.bfloat16):
            xs = [r(*s, dtype=dtype) for s in shapes]
            _backward(getattr(smp, name)(*xs), xs)

    for dtype in (torch.float32, torch.bfloat16):
        x, res, w, b = r(6, 40, dtype=dtype), r(6, 40, dtype=dtype), r(40, dtype=dtype), \
            r(40, dtype=dtype)
        _backward(S.rms_norm(x, 40, w), [x, w])
        _backward(S.layer_norm(x, 40, w, b), [x, w, b])
        _backward(S.add_rms_norm(x, res, 40, w), [x, res, w])
        _backward(S.add_layer_norm(x, res, 40, w, b), [x, res, w, b])
        _backward(S.softmax(x), [x])
        _backward(S.log_softmax(x, 0), [x])
        _backward(S.gelu(x), [x])
        _backward(S.gelu(x, "tanh"), [x])
        _backward(S.silu(x), [x])
        _backward(S.swiglu(x, res), [x, res])
        _backward(S.geglu(x, res, "tanh"), [x, res])
        tgt = torch.randint(0, 40, (6,))
        tgt[1] = -100
        for red in ("mean", "sum", "none"):
            _backward(S.cross_entropy(x, tgt, reduction=red), [x])
        _backward(S.cross_entropy(x, tgt, label_smoothing=0.1), [x])
        q, k = r(2, 3, 7, 16, dtype=dtype), r(2, 3, 7, 16, dtype=dtype)
        cos, sin = torch.randn(7, 16, dtype=dtype), torch.randn(7, 16, dtype=dtype)
        _backward(S.rope(q, cos, sin), [q])
        _backward(S.rope(q, cos, sin, interleaved=True), [q])
        _backward(S.rope(q, cos[:, :8], sin[:, :8]), [q])  # partial rotary
        _backward(S.apply_rotary_pos_emb(q, k, cos, sin), [q, k])
    with config.override(max_row_block=16):  # looped rows and rows with column partials
        x, w = r(6, 40), r(40)
        _backward(S.rms_norm(x, 40, w), [x, w])
        _backward(S.softmax(x), [x])

    cases: list[tuple[int, int, int, int, dict[str, Any]]] = [
             (2, 2, 9, 9, {}), (2, 2, 9, 9, {"causal": True}), (2, 2, 9, 20, {"window": 5}),
             (2, 2, 9, 9, {"softcap": 3.0}), (4, 2, 9, 9, {"causal": True}),
             (4, 2, 9, 13, {"causal": True, "alibi_slopes": torch.rand(4)}),
             (8, 2, 1, 37, {"causal": True}), (4, 4, 1, 20, {"window": 5})]
    for h, hk, lq, lk, opts in cases:
        q, k, v = r(2, h, lq, 16), r(2, hk, lk, 16), r(2, hk, lk, 16)
        _backward(S.attention(q, k, v, **opts), [q, k, v])
    lens = torch.tensor([37, 1], dtype=torch.int32)
    q, k, v = r(2, 4, 1, 16), r(2, 2, 37, 16), r(2, 2, 37, 16)
    _backward(S.attention(q, k, v, causal=True, cache_seqlens=lens), [q, k, v])
    with config.override(attn_splits=3):
        _backward(S.attention(q, k, v, causal=True), [q, k, v])

    @fused
    def int_matmul(a, b):  # a contraction tl.dot cannot take: a reduction kernel
        return a @ b

    int_matmul(torch.randint(-5, 5, (9, 7), dtype=torch.int32),
               torch.randint(-5, 5, (7, 5), dtype=torch.int32))

    @fused
    def user_norm(x, w):
        return x * rsqrt(mean(x * x, axis=-1, keepdims=True) + 1e-6) * w

    x, w = r(6, 40), r(40)
    _backward(user_norm(x, w), [x, w])


def launch_decisions() -> dict[str, set[tuple[str, str]]]:
    """Per target, (what was decided, sha256 of the decisions over a grid of shapes)."""
    import itertools
    from dataclasses import astuple

    from fusile.backends import targets
    from fusile.backends.triton import schedule
    from fusile.backends.triton.kinds import dot, flash, flash_grad, rows

    # where flash-decoding's split count lives (kinds/flash.py's splits in older trees)
    split_count = getattr(flash, "splits", None)
    if split_count is None:
        from fusile.backends.triton.tiled import split_count

    def digest(items: list) -> str:
        return hashlib.sha256(json.dumps(items, default=str).encode()).hexdigest()

    out: dict[str, set[tuple[str, str]]] = {}
    for name, t in sorted(targets.TARGETS.items()):
        got: dict[str, list] = {"dot": [], "flash": [], "splits": [], "flash_grad": [],
                                "rows": []}
        for dt, m, n, k, b, pro in itertools.product(
                ["f32", "bf16"], [16, 4096, 16384], [64, 16384], [64, 4096], [1, 8],
                [False, True]):
            for c in dot.candidates(t, dt, m, n, k, b, pro):
                got["dot"].append((dt, m, n, k, b, pro, astuple(c), str(c),
                                   dot.constexprs(c, k, True).values(), c.options(t.backend)))
        for d, q in itertools.product([32, 64, 128, 256], [None, 1, 17, 4096]):
            for c in flash.candidates(t, d, q):
                for e, keys in itertools.product([d, 96], [None, 37, 4096]):
                    got["flash"].append((d, q, e, keys, astuple(c), flash.constexprs(
                        c, d, e, keys, False, True).values(), c.options(t.backend)))
                for progs, keys in itertools.product([1, 200], [37, 131072]):
                    got["splits"].append((d, progs, keys,
                                          split_count(t, progs, keys, c.block_n, 0)))
        for d in [32, 64, 128, 256]:
            for c in flash_grad.candidates(t, d):
                for heads, looped in itertools.product([[d], [d, 48]], [None, 4096]):
                    got["flash_grad"].append((d, heads, looped, astuple(c), flash_grad.constexprs(
                        c, heads, looped, True).values(), c.options(t.backend)))
        for p_total, r_total in itertools.product([1, 16384], [7, 4096, 262144]):
            for cfg in (schedule.reduction(p_total, r_total, t, 2),
                        schedule.pointwise(p_total, r_total, t, 2)):
                got["rows"].append((p_total, r_total, rows.constexprs(cfg, False).values(),
                                    rows.options(cfg), cfg.looped))
        out[f"launch/{name}"] = {(kind, digest(items)) for kind, items in got.items()}
    return out


def hashes() -> dict[str, list[list[str]]]:
    from fusile import config

    seen, restore = _record()
    try:
        with config.override(target="cpu"):  # the Triton interpreter, not mlir-cpu
            workload()
    finally:
        restore()
    seen.update(launch_decisions())
    return {k: sorted(map(list, v)) for k, v in sorted(seen.items())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", metavar="FILE", help="record the hashes in FILE")
    g.add_argument("--check", metavar="FILE", help="compare with the hashes in FILE")
    a = ap.parse_args(argv)
    now = hashes()
    total = sum(len(v) for v in now.values())
    if a.write:
        with open(a.write, "w") as f:
            json.dump(now, f, indent=1)
        print(f"{total} sources hashed into {a.write}")
        return 0
    with open(a.check) as f:
        before = json.load(f)
    differ = 0
    for flavour in sorted(set(before) | set(now)):
        old = {tuple(x) for x in before.get(flavour, [])}
        new = {tuple(x) for x in now.get(flavour, [])}
        for name, h in sorted(old - new):
            print(f"{flavour}: gone or changed: {name} {h[:12]}")
        for name, h in sorted(new - old):
            print(f"{flavour}: new or changed: {name} {h[:12]}")
        differ += len(old ^ new)
    print(f"{total} sources: {'identical' if not differ else f'{differ} differ'}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
