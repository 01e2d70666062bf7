"""The kernel cache on disk: an unusable directory never fails a compile (a temporary
directory, then memory, with one warning); entries written by several processes at once
are never read half-written."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import fusile
from fusile import config
from fusile.backends.triton import cache

SRC = "import triton\nX = 1\n"


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "_loaded", {})
    monkeypatch.setattr(cache, "_fallback_dir", [])


def _unusable(tmp_path: Path, how: str) -> Path:
    if how == "a regular file":
        (tmp_path / "f").write_text("")
        return tmp_path / "f"
    if how == "an entry that is a directory":
        with config.override(cache_dir=tmp_path / "c"):
            cache.module_path(SRC).mkdir(parents=True)
        return tmp_path / "c"
    # uncreatable: under a regular file
    (tmp_path / "g").write_text("")
    return tmp_path / "g" / "sub"


@pytest.mark.parametrize("how", ["a regular file", "an entry that is a directory",
                                 "uncreatable"])
def test_an_unusable_cache_dir_falls_back_with_one_warning(tmp_path: Path, how: str) -> None:
    with config.override(cache_dir=_unusable(tmp_path, how)):
        with pytest.warns(RuntimeWarning, match="cannot use the kernel cache"):
            assert cache.load_module(SRC).X == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per process, not per module
            assert cache.load_module(SRC + "Y = 2\n").Y == 2


def test_no_writable_directory_at_all_runs_from_memory(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def no_temp_dir(**_: object) -> str:
        raise PermissionError("read-only /tmp")

    monkeypatch.setattr(cache.tempfile, "mkdtemp", no_temp_dir)
    monkeypatch.setattr(cache.tempfile, "gettempdir", lambda: str(tmp_path / "file"))
    (tmp_path / "file").write_text("")  # nothing can be created below it
    fn = fusile.from_source("def f(x):\n    return x * 3.0\n")
    with config.override(cache_dir=_unusable(tmp_path, "a regular file")):
        x = torch.randn(5)
        with pytest.warns(RuntimeWarning, match="keeping generated kernels in memory"):
            out = fn(x)
        assert torch.equal(out, x * 3)  # the interpreter reads the kernel via linecache


def test_processes_writing_one_entry_at_once(tmp_path: Path) -> None:
    code = ("import sys; from fusile import config; from fusile.backends.triton import cache\n"
            "with config.override(cache_dir=sys.argv[1]):\n"
            "    for i in range(30):\n"
            "        cache._loaded.clear()\n"
            "        assert cache.load_module('import triton\\nX = %d\\n' % (i % 3)).X == i % 3\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)]) for _ in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
