"""The environment registry (fusile/config): its table, and a target that cannot run on the
tensors' device."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import fusile
from fusile import config


def test_python_m_fusile_config_prints_every_knob_cleanly() -> None:
    done = subprocess.run([sys.executable, "-W", "error", "-m", "fusile.config"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == ""
    header, *rows = done.stdout.splitlines()
    assert header.split()[:3] == ["variable", "default", "now"]
    assert {r.split()[0] for r in rows} == {k.env for k in config.KNOBS.values()}


def test_a_gpu_target_for_cpu_tensors_is_a_clear_error() -> None:
    fn = fusile.from_source("def f(x):\n    return x * 2.0\n")
    with config.override(target="h100"), pytest.raises(fusile.FusileError,
                                                       match=r"FUSILE_TARGET=h100 .* cpu"):
        fn(torch.randn(3))


def test_every_debug_stage_the_knob_lists_dumps(capsys: pytest.CaptureFixture[str]) -> None:
    """FUSILE_DEBUG promises dumps of the stages its help lists: each one prints."""
    import re

    from fusile.dsl.fused import from_source
    from fusile.stages import DEBUG_STAGES

    listed = re.search(r"made: (.*) \(or 'all'\)", config.KNOBS["debug"].doc)
    assert listed is not None
    stages = [s.strip() for s in listed.group(1).split(",")]
    assert stages == DEBUG_STAGES  # the knob's help and the stage table agree
    for stage in stages:
        fn = from_source(f"def f_{stage}(x):\n    return x * 2 + 1\n")  # a fresh compile
        with config.override(debug=stage, target="cpu"):
            fn(torch.randn(3, 5))
        err = capsys.readouterr().err
        assert f"FUSILE_DEBUG {stage}" in err, stage


def test_a_reader_sees_the_environment_and_overrides_as_they_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """config.reader is the call key's view of the knobs (read on every fused call): an
    environment variable set or removed between two reads, and an override, show at once."""
    monkeypatch.delenv("FUSILE_MAX_ROW_BLOCK", raising=False)
    monkeypatch.delenv("FUSILE_TF32", raising=False)
    read = config.reader("tf32", "max_row_block")
    assert read() == config.raw("tf32", "max_row_block")
    first = read()
    monkeypatch.setenv("FUSILE_MAX_ROW_BLOCK", "32")
    assert read() != first and read() == config.raw("tf32", "max_row_block")
    with config.override(tf32=True):
        assert read() == config.raw("tf32", "max_row_block") != first
    monkeypatch.delenv("FUSILE_MAX_ROW_BLOCK")
    assert read() == first
