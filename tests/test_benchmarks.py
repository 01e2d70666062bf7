"""The benchmark scripts import and parse their arguments on a machine with no GPU (they run
only on the lent GPU, where an import error would cost a device call)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

SCRIPTS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "benchmarks")
                 .glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", SCRIPTS)
def test_imports_and_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    main = getattr(module, "main", None)
    if main is None or not inspect.signature(main).parameters:
        return  # a helper module, or a script with no options: importing it is the check
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "usage" in capsys.readouterr().out


def test_the_decode_step_runs_more_steps_than_the_cache_has_room_for() -> None:
    """The decode benchmark times one step again and again: the static cache is rewound
    before each (transformers' static layers write at their own counter, which ran off the
    cache's end after 8 steps: a device-side assert on the GPU, an IndexError here)."""
    pytest.importorskip("transformers")
    from benchmarks.bench_hf import TINY
    from benchmarks.bench_hf_decode import run_one

    r = run_one("stock", "Llama", 1, 1, 16, 12, "cpu", TINY)
    assert r["ms"] > 0 and r["tokens_s"] > 0
