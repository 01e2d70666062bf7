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
