"""The `fusile` command line: every verb on a sample file, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusile.cli import main
from fusile.stages import FRONT_END_STAGES

MODEL = '''
from fusile import fused, rsqrt, mean

@fused
def add_rms_norm(x, residual, weight, eps: float = 1e-6):
    h = x + residual
    y = h * rsqrt(mean(h * h, axis=-1, keepdims=True) + eps) * weight
    return y, h

def double(x):
    return x * 2.0
'''
SHAPES = ["--shape", "x=bf16[M,4096]", "--shape", "residual=bf16[M,4096]",
          "--shape", "weight=bf16[4096]"]


@pytest.fixture
def model(tmp_path: Path) -> str:
    path = tmp_path / "model.py"
    path.write_text(MODEL)
    return str(path)


def test_compile_hsaco_with_metadata(model: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["compile", f"{model}:add_rms_norm", "--target", "mi300x", *SHAPES,
                 "--emit", "hsaco", "-o", str(out)]) == 0
    assert (out / "fusile_k0.hsaco").stat().st_size > 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta[0]["spills"] == 0 and meta[0]["registers"] > 0
    assert "[1/1] fusile_k0" in capsys.readouterr().err  # progress


@pytest.mark.parametrize("emit", ["mlir", "fused", "plan", "triton", "ptx"])
def test_compile_text_stages(model: str, emit: str, capsys) -> None:
    assert main(["compile", f"{model}:add_rms_norm", "--target", "h100", *SHAPES,
                 "--size", "M=128", "--emit", emit]) == 0
    text = capsys.readouterr().out
    marker = {"mlir": "func.func", "fused": "linalg.generic", "plan": "kernel",
              "triton": "@triton.jit", "ptx": ".entry"}[emit]
    assert marker in text


@pytest.mark.parametrize("emit", FRONT_END_STAGES)
def test_every_front_end_stage_of_the_table_is_emitted(model: str, emit: str, capsys) -> None:
    """stages.py's front-end stages and Compiled.artifact's table agree: each one emits."""
    assert main(["compile", f"{model}:add_rms_norm", "--target", "h100", *SHAPES,
                 "--emit", emit]) == 0
    assert capsys.readouterr().out.strip()


def test_plain_function_is_wrapped(model: str, capsys) -> None:
    assert main(["compile", f"{model}:double", "--target", "h100", "--shape", "x=f32[8]",
                 "--emit", "mlir"]) == 0
    assert "arith.mulf" in capsys.readouterr().out


def test_explain_table_and_json(model: str, capsys) -> None:
    assert main(["explain", f"{model}:add_rms_norm", *SHAPES, "--size", "M=8192"]) == 0
    assert "memory" in capsys.readouterr().out
    assert main(["explain", f"{model}:add_rms_norm", *SHAPES, "--size", "M=8192",
                 "--target", "mi300x", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["target"] == "mi300x" and data["kernels"][0]["bytes"] > 0


def test_targets_and_help(capsys) -> None:
    assert main(["targets"]) == 0
    listed = capsys.readouterr().out
    assert "mlir-cpu" in listed and "reference" in listed and "mi300x" in listed
    for verb in ("compile", "explain", "targets", "demo"):
        with pytest.raises(SystemExit) as info:
            main([verb, "--help"])
        assert info.value.code == 0
    assert main([]) == 2


@pytest.mark.parametrize("argv,message", [
    (["explain", "missing.py:f"], "no such file: missing.py"),
    (["explain", "MODEL:nope"], "no function 'nope'"),
    (["explain", "MODEL"], "expected FILE.py:FUNCTION"),
    (["explain", "MODEL:add_rms_norm", "--shape", "x=bf16[4,,x-1]"], "neither a size nor"),
    (["explain", "MODEL:add_rms_norm", "--shape", "x=bf17[4]"], "unknown dtype 'bf17'"),
    (["explain", "MODEL:add_rms_norm", "--shape", "garbage"], "expected NAME=DTYPE[dims]"),
    (["explain", "MODEL:add_rms_norm", "--size", "M=x"], "expected NAME=INT"),
    (["compile", "MODEL:add_rms_norm", "--target", "h200x", "--shape", "x=f32[4]"],
     "unknown target 'h200x'"),
    (["compile", "MODEL:add_rms_norm", "--target", "h100", *SHAPES, "--emit", "cubin"],
     "give -o DIR"),
    (["explain", "MODEL:add_rms_norm", "--shape", "x=f32[4]"], "missing argument 'residual'"),
    (["explain", "MODEL:add_rms_norm", *SHAPES], "give its value with --size M=INT"),
    (["explain", "MODEL:add_rms_norm", *SHAPES, "--size", "M=8", "--size", "K=2"],
     "no --shape has a dim named 'K'"),
    (["compile", "MODEL:add_rms_norm", "--target", "cpu", *SHAPES],
     "runs on the Triton interpreter"),
    (["compile", "MODEL:add_rms_norm", "--target", "mi300x", *SHAPES, "--emit", "ptx"],
     "--emit ptx does not exist for mi300x"),
    (["compile", "MODEL:add_rms_norm", "--target", "h100", *SHAPES, "--emit", "hsaco"],
     "--emit hsaco does not exist for h100"),
    (["demo", "--rows", "0"], "expected a positive integer"),
])
def test_bad_input(model: str, argv: list[str], message: str, capsys) -> None:
    argv = [a.replace("MODEL", model) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = int(exit_.code or 0)
    assert code != 0
    assert message in capsys.readouterr().err


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("fusile ")


def test_demo_runs_on_cpu(capsys) -> None:
    assert main(["demo", "--cpu", "--rows", "3", "--cols", "100"]) == 0
    out = capsys.readouterr().out
    assert "all programs match the reference" in out and "hsaco" in out
