"""The Triton backend: generated kernels (interpreter on CPU, CUDA with -m gpu) against torch
in float64 and fusile's float64 reference, and ahead-of-time builds for h100 and mi300x (the
plans they come from: tests/lowering/test_plan.py)."""

from __future__ import annotations

import pytest
import torch

import fusile
from fusile import config, samples
from tests.bounds import checked
from tests.numerics import assert_close

PROGRAMS = list(samples.cases(2, 8))
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SIZES = [(3, 1000), (17, 4097)]


def _check(name: str, m: int, n: int, dtype: torch.dtype, device: str,
           strided: bool = False) -> None:
    fn, torch_ref, args = samples.cases(m, n, dtype, device)[name]
    if strided:  # the same values through non-contiguous views
        args = tuple(_strided(a) for a in args)
    if device == "cpu":  # every masked access inside the tensors (a GPU would fault)
        with checked():
            out = fn(*args)
    else:
        out = fn(*args)
    outs = out if isinstance(out, tuple) else (out,)
    # torch in float64 (samples.NAME_ref: shares no code with fusile), and the float64
    # reference over fusile's MLIR as a second opinion on the lowering
    theirs = torch_ref(*(a.cpu() for a in args))
    ours = fn.reference(*args)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    ours = ours if isinstance(ours, tuple) else (ours,)
    for o, t, r in zip(outs, theirs, ours, strict=True):
        assert o.device.type == torch.device(device).type
        assert o.dtype == dtype
        assert_close(o, t, dtype)
        assert_close(o, torch.from_numpy(r), dtype)


def _strided(a: torch.Tensor) -> torch.Tensor:
    if a.dim() == 2:  # column-major storage: stride (1, rows)
        return a.T.contiguous().T
    wide = torch.empty(a.shape[0] * 2, dtype=a.dtype, device=a.device)
    wide[::2] = a
    return wide[::2]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n", SIZES)
@pytest.mark.parametrize("name", PROGRAMS)
def test_interpreter_matches_reference(name: str, m: int, n: int, dtype: torch.dtype) -> None:
    _check(name, m, n, dtype, "cpu")


@pytest.mark.parametrize("name", PROGRAMS)
def test_strided_inputs(name: str) -> None:
    _check(name, 5, 300, torch.float32, "cpu", strided=True)


@pytest.mark.parametrize("name", ["layer_norm", "softmax", "logsumexp", "add_rms_norm",
                                  "colsum_scale"])
def test_long_rows_take_the_looped_kernel(name: str) -> None:
    with config.override(max_row_block=256):
        _check(name, 5, 3000, torch.float32, "cpu")
        fn, _ref, args = samples.cases(5, 3000)[name]
        assert "for r0 in range(0, R, BLOCK_R):" in fn.triton(*args, target="cpu")


def test_triton_source_is_readable_and_located() -> None:
    fn, _ref, args = samples.cases(4, 64)["layer_norm"]
    src = fn.triton(*args, target="cpu")
    assert "@triton.jit" in src and "def fusile_k0(" in src
    assert "x_ptr" in src and "weight_ptr" in src
    assert "# samples.py:" in src


@pytest.mark.parametrize("target", ["h100", "mi300x"])
@pytest.mark.parametrize("name", PROGRAMS)
def test_aot_compiles_without_spills(name: str, target: str) -> None:
    from fusile import bf16

    fn, _ref, args = samples.cases(4, 64)[name]
    sig = {p: bf16["M", 4096] if a.dim() == 2 else bf16[4096]
           for p, a in zip(fn.params, args, strict=False)}
    art = fn.compile(target, **sig)
    assert art.kernels, "no kernels"
    binary = "cubin" if target == "h100" else "hsaco"
    for k in art.kernels:
        assert isinstance(k.asm[binary], bytes) and len(k.asm[binary]) > 0
        assert k.spills == 0, k.summary()
        assert k.registers is not None and 0 < k.registers <= 255, k.summary()
    assert "ttir" in art.kernels[0].asm


@pytest.mark.parametrize("target", ["h100", "mi300x"])
def test_aot_signature_types_follow_the_arguments(target: str) -> None:
    """The compiled kernel's parameters have the types the call will pass: each pointer its
    tensor's element type, a float parameter f32, sizes and strides i32. A wrong type here
    compiles fine and reads the bits as something else."""
    import re

    from fusile import bf16, f16, f64

    fn = fusile.from_source("def f(x, w, s: float):\n"
                            "    return astype(x * w * s, x), astype(w, f32) + 1.0\n")
    art = fn.compile(target, x=bf16["M", 64], w=f16[64], s=0.5)
    (k,) = art.kernels
    sig = re.search(r"tt.func public @\w+\((.*?)\) attributes", k.asm["ttir"], re.S)
    assert sig is not None
    types = dict(re.findall(r"%(\w+): (!tt\.ptr<\w+>|\w+)", sig.group(1)))
    assert types.pop("x_ptr") == "!tt.ptr<bf16>" and types.pop("w_ptr") == "!tt.ptr<f16>"
    assert types.pop("out0_ptr") == "!tt.ptr<bf16>" and types.pop("out1_ptr") == "!tt.ptr<f32>"
    floats = [n for n, t in types.items() if t == "f32"]
    assert len(floats) == 1, types  # s
    assert all(t == "i32" for n, t in types.items() if n not in floats), types
    # beside float64 tensors a float parameter is a double (torch's `x * s` for a float64 x)
    k64 = fusile.from_source("def f(x, s: float):\n    return x * s\n").compile(
        target, x=f64["M", 64], s=0.1).kernels[0]
    assert re.search(r"%a\d+: f64", k64.asm["ttir"]), k64.asm["ttir"][:600]


def test_aot_rejects_unknown_target() -> None:
    from fusile import FusileError, bf16

    with pytest.raises(FusileError, match="unknown target 'h200x'"):
        samples.rms_norm.compile("h200x", x=bf16["M", 64], weight=bf16[64])


def test_corrupt_cache_entry_is_rewritten(tmp_path) -> None:
    from fusile.backends.triton import cache

    with config.override(cache_dir=tmp_path):
        src = "import triton\nX = 1\n"
        path = cache.module_path(src)
        cache._loaded.clear()
        assert cache.load_module(src).X == 1
        path.write_text("garbage(")  # a truncated or corrupted file
        cache._loaded.clear()
        assert cache.load_module(src).X == 1
        assert path.read_text().endswith(src)


def test_new_sizes_reuse_the_compiled_program() -> None:
    fn = samples.softmax_last
    fn(torch.randn(3, 100))
    before = len(fn._cache)
    fn(torch.randn(9, 333))
    assert len(fn._cache) == before


# ----------------------------------------------------------------------------- GPU

GPU_SIZES = [(3, 1000), (17, 4097), (64, 32768), (4, 100_000)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n", GPU_SIZES)
@pytest.mark.parametrize("name", PROGRAMS)
def test_cuda_matches_reference(name: str, m: int, n: int, dtype: torch.dtype) -> None:
    _check(name, m, n, dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("name", PROGRAMS)
def test_cuda_strided(name: str) -> None:
    _check(name, 33, 2000, torch.bfloat16, "cuda", strided=True)


@pytest.mark.gpu
def test_cuda_rows_of_a_million() -> None:
    _check("softmax", 2, 2**20, torch.float32, "cuda")
    _check("layer_norm", 2, 2**20, torch.bfloat16, "cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_long_column_reductions_split_across_programs(device: str, dtype: torch.dtype
                                                      ) -> None:
    """Partials of float64 sums are float64 (they were float32: a 1e-8 error)."""
    import fusile

    fn = fusile.from_source("def f(x, w):\n"
                            "    return sum(x * w, axis=0), max(x, axis=0), "
                            "mean(x, axis=0, keepdims=True), sum(w)\n")
    x = torch.randn(3000, 50, device=device, dtype=dtype)
    w = torch.randn(50, device=device, dtype=dtype)
    assert "_split(" in fn.triton(x, w, target="cpu")
    xd, wd = x.double(), w.double()
    refs = [(xd * wd).sum(0), xd.amax(0), xd.mean(0, keepdim=True), wd.sum()]
    # a sum of random signs cancels: its error scales with ||sum |terms| || / ||sum|| (sum(w)
    # of 50 values near 0 once failed the plain bound at 8.2e-6)
    mags = [(xd * wd).abs().sum(0), None, xd.abs().mean(0, keepdim=True), wd.abs().sum()]
    for o, r, mag in zip(fn(x, w), refs, mags, strict=True):
        assert o.dtype == dtype
        cond = 1.0 if mag is None else max(1.0, float(mag.norm() / r.norm()))
        assert_close(o, r, dtype, scale=4 * cond)


def test_repeated_calls_keep_no_reference_to_earlier_tensors() -> None:
    import gc
    import weakref

    fn = samples.rms_norm
    x, w = torch.randn(4, 64), torch.randn(64)
    fn(x, w)
    ref = weakref.ref(x)
    del x
    gc.collect()
    assert ref() is None
    assert fn(torch.randn(4, 64), w).shape == (4, 64)  # the fast path, with the default eps


@pytest.mark.gpu
def test_mixed_devices_is_an_error() -> None:
    import fusile

    with pytest.raises(fusile.FusileError, match="different devices"):
        samples.rms_norm(torch.randn(4, 64, device="cuda"), torch.randn(64))
