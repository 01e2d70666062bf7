"""fusile from several threads: parsing, compiling and first calls of several functions at
once give no error and the same results as one thread."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

import fusile
from fusile.dsl.errors import Source
from fusile.dsl.parser import parse

SOURCES = [
    "def a(x, w):\n    return x * rsqrt(mean(x * x, axis=-1, keepdims=True) + 1e-6) * w\n",
    "def b(x, w):\n    return softmax(x + w, axis=-1)\n",
    "def c(x, w):\n    h = x - mean(x, axis=0, keepdims=True)\n    return h * w, sum(h, axis=-1)\n",
    "def d(x, w):\n    return exp(x) * sigmoid(w) + logsumexp(x, axis=-1, keepdims=True)\n",
]


def _in_threads(n: int, work: Callable[[int], object]) -> list[object]:
    results: list[object] = [None] * n
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, f"{len(errors)} thread(s) failed, first: {errors[0]!r}"
    return results


def test_parsing_from_eight_threads() -> None:
    trees = _in_threads(8, lambda i: [parse(Source("t.py", s)) for s in SOURCES * 20])
    assert all(t == trees[0] for t in trees)


def test_first_calls_from_eight_threads_agree() -> None:
    x, w = torch.randn(7, 33), torch.randn(33)
    fns = [fusile.from_source(s, filename=f"f{i}.py") for i, s in enumerate(SOURCES)]

    def first_calls(i: int) -> dict[int, tuple[torch.Tensor, ...]]:
        out = {}
        for j in [(i + k) % len(fns) for k in range(len(fns))]:  # each starts elsewhere
            r = fns[j](x, w)
            out[j] = r if isinstance(r, tuple) else (r,)
        return out

    results = _in_threads(8, first_calls)
    alone = first_calls(0)
    for got in results:
        assert isinstance(got, dict)
        for j, outs in alone.items():
            assert all(torch.equal(g, e) for g, e in zip(got[j], outs, strict=True))
