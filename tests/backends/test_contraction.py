"""Contraction kernels: tl.dot with fused prologue and epilogue, on the interpreter (CPU) and
CUDA (-m gpu) against the float64 reference; their plans; cross-compiles for h100 and mi300x;
the TF32 opt-in and the tuner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fusile import config, fused
from fusile.backends import targets
from fusile.backends.triton import tune
from fusile.backends.triton.aot import compile_for
from fusile.backends.triton.kinds import dot, flash
from fusile.stdlib.kernels import gelu_erf
from tests.bounds import checked
from tests.numerics import assert_close


@fused
def plain(x, w):
    return x @ w


@fused
def transposed(x, w):
    return x @ w.T


@fused
def both_transposed(x, w):
    return x.T @ w.T


@fused
def linear_gelu_res(x, w, b, res):
    return gelu_erf(x @ w + b) + res


@fused
def scaled_operands(x, w, s):
    return (x * s) @ astype(w, x)


@fused
def exp_prologue(x, w):
    return exp(x) @ w  # exp(0) = 1: the k tail past the end must be zeroed, not loaded as 0


@fused
def row_col_scales(x, w, r, c):
    return (x @ w) * r[:, None] * c


@fused
def two_outputs(x, w, b):
    h = x @ w + b
    return h, h * sigmoid(h)


def _rand(*shape: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, device=device)


def _cases(m: int, n: int, k: int, dtype: torch.dtype, device: str) -> dict:
    def r(*shape: int) -> torch.Tensor:
        return _rand(*shape, dtype=dtype, device=device)

    return {
        "plain": (plain, (r(m, k), r(k, n))),
        "transposed": (transposed, (r(m, k), r(n, k))),
        "both_transposed": (both_transposed, (r(k, m), r(n, k))),
        "batched": (plain, (r(3, m, k), r(3, k, n))),
        "batch_broadcast": (plain, (r(2, 1, m, k), r(3, k, n))),
        "batched_transposed": (transposed, (r(2, m, k), r(n, k))),
        "linear_gelu_res": (linear_gelu_res, (r(m, k), r(k, n), r(n), r(m, n))),
        "scaled_operands": (scaled_operands, (r(m, k), r(k, n), r(k))),
        "exp_prologue": (exp_prologue, (r(m, k), r(k, n))),
        "row_col_scales": (row_col_scales, (r(m, k), r(k, n), r(m), r(n))),
        "two_outputs": (two_outputs, (r(m, k), r(k, n), r(n))),
    }


# each case in torch, float64 (the oracle: shares no code with fusile)
TORCH = {
    "plain": lambda x, w: x @ w,
    "transposed": lambda x, w: x @ w.mT,
    "both_transposed": lambda x, w: x.mT @ w.mT,
    "batched": lambda x, w: x @ w,
    "batch_broadcast": lambda x, w: x @ w,
    "batched_transposed": lambda x, w: x @ w.mT,
    "linear_gelu_res": lambda x, w, b, res: torch.nn.functional.gelu(x @ w + b) + res,
    "scaled_operands": lambda x, w, s: (x * s) @ w,
    "exp_prologue": lambda x, w: x.exp() @ w,
    "row_col_scales": lambda x, w, r, c: (x @ w) * r[:, None] * c,
    "two_outputs": lambda x, w, b: (x @ w + b, (x @ w + b) * torch.sigmoid(x @ w + b)),
}
CASES = list(_cases(2, 2, 2, torch.float32, "cpu"))
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _check(name: str, m: int, n: int, k: int, dtype: torch.dtype, device: str) -> None:
    torch.manual_seed(hash((name, m, n, k)) % 2**31)
    fn, args = _cases(m, n, k, dtype, device)[name]
    if device == "cpu":  # every masked access inside the tensors (a GPU would fault)
        with checked():
            out = fn(*args)
    else:
        out = fn(*args)
    theirs = TORCH[name](*(a.cpu().double() for a in args))
    ref = fn.reference(*args)
    outs = out if isinstance(out, tuple) else (out,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    scale = 4 if dtype == torch.float32 else 1
    for o, t, r in zip(outs, theirs, refs, strict=True):
        assert o.device.type == torch.device(device).type and o.dtype == dtype
        assert_close(o, t, dtype, scale=scale)
        assert_close(o, torch.from_numpy(r), dtype, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_interpreter_matches_reference(name: str, dtype: torch.dtype) -> None:
    _check(name, 33, 65, 17, dtype, "cpu")


def test_every_case_is_one_dot_kernel() -> None:
    for name, (fn, args) in _cases(33, 65, 17, torch.bfloat16, "cpu").items():
        plan = str(fn.plan(*args))
        assert plan.count("kernel ") == 1 and "(contraction" in plan, (name, plan)
        assert "tl.dot(" in fn.triton(*args, target="cpu"), name


def test_gelu_linear_residual_plan_is_one_kernel() -> None:
    x, w, b, res = (_rand(*s, dtype=torch.bfloat16, device="cpu")
                    for s in [(64, 32), (32, 48), (48,), (64, 48)])
    ex = linear_gelu_res.explain(x, w, b, res)
    (k,) = ex.kernels
    assert k.kind == "contraction"
    assert k.read_bytes == 2 * (64 * 32 + 32 * 48 + 48 + 64 * 48)  # no f32 product in HBM
    assert k.write_bytes == 2 * 64 * 48


def test_integer_and_non_dot_contractions_still_run() -> None:
    """A product tl.dot cannot take (integers; a sum of exp(a + b)) runs as a reduction."""
    import fusile

    xi, wi = torch.randint(-5, 5, (9, 7), dtype=torch.int32), torch.randint(-5, 5, (7, 5),
                                                                            dtype=torch.int32)
    assert torch.equal(plain(xi, wi), (xi.long() @ wi.long()).int())
    f = fusile.from_source("def f(a, b):\n"
                           "    return sum(exp(a[:, :, None] + b[None, :, :]), axis=1)\n")
    a, b = torch.randn(9, 7), torch.randn(7, 5)
    assert "tl.dot" not in f.triton(a, b, target="cpu")
    assert_close(f(a, b), torch.from_numpy(f.reference(a, b)), torch.float32)


def test_float32_is_ieee_unless_tf32_is_asked_for() -> None:
    x, w = torch.randn(8, 8), torch.randn(8, 8)
    with config.override(tf32=False):
        src = plain.compiled(x, w)
        assert 'input_precision="ieee"' in compile_for(src, targets.get("h100"))["triton"]
    with config.override(tf32=True):
        assert 'input_precision="tf32"' in compile_for(src, targets.get("h100"))["triton"]
    xb, wb = x.bfloat16(), w.bfloat16()
    assert "input_precision" not in compile_for(plain.compiled(xb, wb),
                                                targets.get("h100"))["triton"]


@pytest.mark.parametrize("target", ["h100", "mi300x"])
def test_every_contraction_cross_compiles_without_spills(target: str) -> None:
    t = targets.get(target)
    for name, (fn, args) in _cases(33, 65, 17, torch.bfloat16, "cpu").items():
        for sizes in (None, {}):  # the test's sizes, and 4096 for every symbolic size
            compiled = fn.compiled(*args)
            arts = compile_for(compiled, t, sizes=sizes)
            for k in arts.kernels:
                assert k.spills == 0, (name, target, k.summary())
                assert k.shared_bytes <= t.smem_kib * 1024, (name, k.summary())


@pytest.mark.parametrize("target", ["h100", "mi300x"])
def test_every_candidate_config_compiles_without_spills(target: str) -> None:
    """The tuner may pick any candidate: with the heaviest epilogue, none may spill."""
    t = targets.get(target)
    x, w, b, res = (_rand(*s, dtype=torch.bfloat16, device="cpu")
                    for s in [(64, 32), (32, 48), (48,), (64, 48)])
    compiled = linear_gelu_res.compiled(x, w, b, res)
    cands = dot.candidates(t, "bf16", 4096, 4096, 4096)
    assert len(cands) > 1
    for k in compile_for(compiled, t, dot_configs=cands).kernels:
        assert k.spills == 0, k.summary()


def test_tuner_keeps_the_earlier_candidate_on_a_near_tie(tmp_path: Path) -> None:
    """Lists are ordered by prior measurements: a later candidate must win by the margin."""
    t = targets.get("h100")
    cands = flash.candidates(t, 64)
    near = {cands[0]: 1.0, cands[1]: 1.0 / (1 + tune.MARGIN / 2), cands[2]: 2.0, cands[3]: 3.0}
    clear = near | {cands[2]: 1.0 / (1 + 2 * tune.MARGIN)}
    with config.override(cache_dir=str(tmp_path), tune="quiet"):
        assert tune.Tuner().best(t, "near", cands, "s", near.__getitem__) == cands[0]
        assert tune.Tuner().best(t, "clear", cands, "s", clear.__getitem__) == cands[2]
        prepared: list[tune.DotConfig] = []

        def prepare(c: tune.DotConfig) -> None:  # every compile before the first timing
            prepared.append(c)
            if c == cands[0]:
                raise RuntimeError("compiler crash")

        def time(c: tune.DotConfig) -> float:
            assert len(prepared) == len(cands) and c != cands[0]
            return near[c]

        assert tune.Tuner().best(t, "prep", cands, "s", time, prepare) == cands[1]


def test_tuner_keeps_each_candidates_best_round(tmp_path: Path) -> None:
    """A transient slowdown in one round must not decide: each candidate keeps its best."""
    t = targets.get("h100")
    cands = flash.candidates(t, 64)[:2]
    rounds = {cands[0]: iter([1.3, 1.0]), cands[1]: iter([1.1, 1.1])}  # cands[0] hit once
    with config.override(cache_dir=str(tmp_path), tune="quiet"):
        assert tune.Tuner().best(t, "noisy", cands, "s", lambda c: next(rounds[c])) == cands[0]


def test_tuner_times_once_and_remembers_on_disk(tmp_path: Path) -> None:
    t = targets.get("h100")
    cands = dot.candidates(t, "bf16", 4096, 4096, 4096)
    times = {c: 1.0 + i for i, c in enumerate(cands)}
    times[cands[2]] = 0.5  # the fastest
    calls: list[tune.DotConfig] = []

    def time(c: tune.DotConfig) -> float:
        calls.append(c)
        if c == cands[1]:
            raise RuntimeError("out of resources")  # skipped, not fatal
        return times[c]

    with config.override(cache_dir=str(tmp_path), tune="quiet"):
        assert tune.Tuner().best(t, "k|bf16|4096", cands, "4096^3", time) == cands[2]
        # every round times each candidate that ran; the one that failed is timed once
        assert len(calls) == tune.ROUNDS * (len(cands) - 1) + 1
        saved = json.loads((tmp_path / "tuning" / "h100.json").read_text())
        assert saved["k|bf16|4096"]["block_m"] == cands[2].block_m
        # a new process: the winner comes from disk, nothing is timed
        n = len(calls)
        assert tune.Tuner().best(t, "k|bf16|4096", cands, "4096^3", time) == cands[2]
        assert len(calls) == n
    with config.override(cache_dir=str(tmp_path / "fresh"), tune="off"):
        assert tune.Tuner().best(t, "other", cands, "4096^3", time) == cands[0]
        assert len(calls) == n


def test_tune_knob_rejects_unknown_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSILE_TUNE", "sometimes")
    with pytest.raises(ValueError, match="on, quiet, off"):
        config.get("tune")


# ----------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_cuda_matches_reference(name: str, dtype: torch.dtype) -> None:
    _check(name, 33, 65, 17, dtype, "cuda")
    _check(name, 300, 260, 200, dtype, "cuda")


@pytest.mark.gpu
def test_cuda_tunes_a_large_product(tmp_path: Path) -> None:
    with config.override(cache_dir=str(tmp_path), tune="quiet"):
        _check("linear_gelu_res", 1024, 1024, 1024, torch.bfloat16, "cuda")
    assert (tmp_path / "tuning" / "h100.json").exists() or \
        list((tmp_path / "tuning").glob("*.json"))
