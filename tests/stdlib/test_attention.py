"""Attention from the DSL, forward and backward: one flash kernel forward and two flash
backward kernels, against a float64 reference (interpreter on CPU, CUDA with -m gpu), their
plans, the loop bounds from masks, and cross-compiles."""

from __future__ import annotations

import math
import textwrap
import types

import pytest
import torch

import fusile
from fusile.backends import targets
from fusile.backends.triton import tune
from fusile.backends.triton.aot import compile_for
from fusile.backends.triton.kinds import flash, flash_grad
from fusile.stdlib.attention import attention, attention_bwd, attention_fwd
from tests.filecheck import between, branches, function
from tests.numerics import assert_close


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              window: int | None = None, softcap: float | None = None,
              scale: float | None = None, bias: torch.Tensor | None = None,
              alibi_slopes: torch.Tensor | None = None) -> torch.Tensor:
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1).double(), v.repeat_interleave(g, 1).double()
    lq, lk = q.shape[2], k.shape[2]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q.double() @ k.transpose(-1, -2)) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias.double()
    i = torch.arange(lq, device=q.device)[:, None] + lk - lq
    j = torch.arange(lk, device=q.device)[None, :]
    if alibi_slopes is not None:
        s = s - alibi_slopes.double()[:, None, None] * (i - j).abs()
    keep = torch.ones(lq, lk, dtype=torch.bool, device=q.device)
    if causal:
        keep &= j <= i
    if window:
        keep &= i - j < window
    # a row left no key is zeros, as in sdpa and FlashAttention (torch.softmax gives NaN)
    p = torch.softmax(s.masked_fill(~keep, float("-inf")), -1).nan_to_num(0.0)
    return p @ v


CASES = {  # name -> (q heads, kv heads, q_len, kv_len, d, e, options)
    "plain": (2, 2, 37, 37, 16, 16, {}),
    "causal": (2, 2, 37, 37, 16, 16, {"causal": True}),
    "causal_ragged": (2, 2, 20, 45, 16, 24, {"causal": True}),
    "window": (2, 2, 37, 37, 16, 16, {"window": 5}),
    "causal_window": (2, 2, 45, 45, 16, 16, {"causal": True, "window": 7}),
    "softcap": (2, 2, 37, 37, 16, 16, {"softcap": 3.0}),
    "gqa": (4, 2, 33, 33, 16, 16, {"causal": True}),
    "head_dim_32_odd": (2, 1, 50, 70, 32, 32, {}),
    "alibi": (4, 2, 30, 41, 16, 16, {"causal": True, "alibi": True}),
    "negative_scale": (2, 2, 37, 70, 16, 16, {"scale": -0.3}),  # max(s * c) != c * max(s)
    "causal_negative_scale": (2, 2, 37, 37, 16, 16, {"causal": True, "scale": -0.3}),
    "causal_even": (2, 2, 32, 64, 16, 16, {"causal": True}),  # BLOCK_N divides kv_len
    # a row block's last diagonal key is the first key of a tile (kv_len - q_len = 1 with
    # equal tiles): a loop bound one short skips that tile
    "causal_tile_edge": (2, 2, 64, 65, 16, 16, {"causal": True}),
    "zero_scale": (2, 2, 32, 64, 16, 16, {"causal": True, "scale": 0.0}),  # no -inf * 0
    # decoding: one query row (an ordinary size of the flash kernel; the group's query heads
    # are its rows)
    "decode": (8, 2, 1, 37, 16, 16, {"causal": True}),
    "decode_window": (4, 4, 1, 70, 16, 16, {"window": 5}),
    "decode_softcap_alibi": (4, 2, 1, 41, 16, 16, {"softcap": 3.0, "alibi": True}),
    "decode_long": (2, 1, 1, 300, 32, 32, {"causal": True}),
    "single_key": (2, 2, 1, 1, 16, 16, {}),
    "head_dim_1": (2, 2, 9, 13, 1, 1, {"causal": True}),
}


def _check(name: str, dtype: torch.dtype, device: str, scale_up: int = 1,
           grad: bool = True) -> None:
    """Forward and (with grad) dq, dk, dv against the float64 reference."""
    h, hk, lq, lk, d, e, opts = CASES[name]
    lq, lk = lq * scale_up, lk * scale_up
    torch.manual_seed(len(name) + lq)
    q = torch.randn(2, h, lq, d, dtype=dtype, device=device, requires_grad=grad)
    k = torch.randn(2, hk, lk, d, dtype=dtype, device=device, requires_grad=grad)
    v = torch.randn(2, hk, lk, e, dtype=dtype, device=device, requires_grad=grad)
    out = check_against(reference, q, k, v, dict(opts), grad)
    assert out.shape == (2, h, lq, e) and out.dtype == dtype


def check_against(ref_fn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, opts: dict,
                  grad: bool, **extra) -> torch.Tensor:
    """fusile's attention(q, k, v, **opts, **extra) against ref_fn(q, k, v, **opts) in
    float64: the output, and with `grad` dq, dk and dv (an "alibi" option draws slopes)."""
    dtype, device = q.dtype, q.device
    if opts.pop("alibi", False):
        opts["alibi_slopes"] = torch.rand(q.shape[1], device=device)
    out = attention(q, k, v, **opts, **extra)
    ref_in = [t.detach().double().requires_grad_(grad) for t in (q, k, v)]
    ref = ref_fn(*ref_in, **opts)
    assert_close(out, ref, dtype, scale=4 if dtype == torch.float32 else 1)
    if grad:
        do = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), do)
        ref_grads = torch.autograd.grad(ref, ref_in, do.double())
        for got, want, what in zip(grads, ref_grads, "qkv", strict=True):
            assert got.shape == want.shape and got.dtype == dtype, what
            # the backward rounds P and dS to the operand type for its dots (FlashAttention 2)
            assert_close(got, want, dtype, scale=8 if dtype == torch.float32 else 1.5)
    return out


@pytest.mark.parametrize("name", CASES)
def test_interpreter_matches_reference(name: str) -> None:
    _check(name, torch.float32, "cpu")


def test_bf16_on_the_interpreter() -> None:
    _check("causal_ragged", torch.bfloat16, "cpu")


ALIBI = """
def alibi(q, k, v, slopes, scale: float):
    i = arange(size(q, -2))[:, None]
    j = arange(size(k, -2))[None, :]
    s = (q @ k.T) * scale + slopes[:, None, None] * astype(j - i, q)
    return softmax(where(j <= i, s, -inf), axis=-1) @ v
"""

BIAS = """
def biased(q, k, v, bias, scale: float):
    return softmax((q @ k.T) * scale + bias, axis=-1) @ v
"""


def test_alibi_and_bias_tensors_from_the_dsl() -> None:
    q, k, v = (torch.randn(2, 3, 29, 16) for _ in range(3))
    slopes = torch.rand(3)
    fn = fusile.from_source(ALIBI)
    i, j = torch.arange(29)[:, None], torch.arange(29)[None, :]
    bias = slopes[:, None, None].double() * (j - i)
    assert_close(fn(q, k, v, slopes, 0.25), reference(q, k, v, True, scale=0.25, bias=bias),
                 torch.float32, scale=4)
    assert "(attention" in str(fn.plan(q, k, v, slopes, 0.25))
    fb = fusile.from_source(BIAS)
    b = torch.randn(2, 3, 29, 29)
    assert_close(fb(q, k, v, b, 0.25), reference(q, k, v, scale=0.25, bias=b), torch.float32,
                 scale=4)


NO_MASK = torch.ones((1, 1, 1, 1, 1), dtype=torch.bool)  # the mask argument, unread


def _fwd_args(q: torch.Tensor, causal: bool = False, window: int = 0) -> tuple:
    ones, lens = torch.ones(q.shape[1], q.shape[2]), torch.ones(1, dtype=torch.int32)
    return (q, q, q, ones, lens, NO_MASK, 0.25, 0.0, causal, window, False, False, False, False,
            False)


def _bwd_args(q: torch.Tensor, causal: bool = False, window: int = 0) -> tuple:
    lse = torch.randn(q.shape[:-1])
    ones, lens = torch.ones(q.shape[1], q.shape[2]), torch.ones(1, dtype=torch.int32)
    return (q, q, q, q, q, lse, ones, lens, NO_MASK, 0.25, 0.0, causal, window, False, False,
            False, False, False)


def test_plans_keep_the_score_matrix_on_chip() -> None:
    """Forward: one kernel reading q, k, v and writing o and the float32 log-sum-exp.
    Backward: the row statistics, then dk and dv in one kernel and dq in another; every
    kernel reads and writes only (.., seq, head_dim) or (.., seq) tensors."""
    q = torch.randn(2, 4, 1, 64, 32, dtype=torch.bfloat16)
    (kern,) = attention_fwd.explain(*_fwd_args(q, True)).kernels
    assert kern.kind == "attention"
    assert kern.read_bytes == 3 * q.numel() * 2  # without ALiBi, no slopes
    assert kern.write_bytes == q.numel() * 2 + q.numel() // 32 * 4  # o, lse
    ex = attention_bwd.explain(*_bwd_args(q, True))
    assert [k.kind for k in ex.kernels] == ["reduction", "attention-grad", "attention-grad"]
    rows = q.numel() // 32 * 4  # a float32 (.., seq) tensor: lse, delta
    assert ex.kernels[0].read_bytes == 2 * q.numel() * 2 and ex.kernels[0].write_bytes == rows
    for kern in ex.kernels[1:]:  # q, k, v, do, lse and delta; a score matrix would be 4x q
        assert kern.read_bytes == 4 * q.numel() * 2 + 2 * rows
    assert ex.kernels[1].write_bytes == 2 * q.numel() * 2  # dk and dv (bf16)
    assert ex.kernels[2].write_bytes == q.numel() * 2  # dq


def test_masks_bound_the_loops() -> None:
    """Position masks bound the loop (tiles no row sees are never visited) and split it: the
    tiles every row sees whole run without masks, between masked stages: for a positive scale
    in one loop with a branch on the tile that only selects on s, else (a negative scale, or
    scores that load a tensor, which a branch would keep Triton from pipelining) in three.
    Without position masks, one loop when BLOCK_N divides the keys (EVEN_N)."""
    q = torch.randn(1, 1, 1, 40, 16)

    def one_kernel(src: str) -> str:  # the flash kernel, not its split-key variants
        return function(src, "fusile_k0")

    causal = one_kernel(attention_fwd.triton(*_fwd_args(q, True), target="cpu"))
    assert "hi = tl.minimum(hi," in causal and "lo = tl.maximum" not in causal
    assert "hi_all = tl.minimum(hi_all," in causal and "lo_all = tl.maximum" not in causal
    window = one_kernel(attention_fwd.triton(*_fwd_args(q, False, 8), target="cpu"))
    assert "lo = tl.maximum(lo," in window and "hi = tl.minimum(hi," not in window
    assert "lo_all = tl.maximum(lo_all," in window
    plain = one_kernel(attention_fwd.triton(*_fwd_args(q), target="cpu"))
    assert "hi = tl.minimum(hi," not in plain and "lo = tl.maximum(lo," not in plain
    k, v = (torch.randn(1, 1, 40, 16) for _ in range(2))
    biased = one_kernel(fusile.from_source(BIAS).triton(q[0], k, v, torch.randn(1, 1, 40, 40),
                                                        0.25, target="cpu"))
    for src in (causal, window):  # POS_SCALE: one loop; else three
        split, staged = branches(src, "POS_SCALE:")
        assert split.count("for j0 in range(") == 1 and staged.count("for j0 in range(") == 3
        whole = between(split, "else:  # every row sees the whole tile", "m_new")
        assert "tl.where" not in whole  # no select
    for src in (causal, window, plain, biased):
        whole = between(src, "# whole tiles: no masks", "for j0")
        assert "-inf\"))" not in whole.replace("m_new == float(\"-inf\")", "")  # no select
    for src in (plain, biased):  # only the end cuts tiles: one loop under EVEN_N, else three
        even, ragged = branches(src, "EVEN_N:")
        assert even.count("for j0 in range(lo, hi,") == 1 and ragged.count("for j0 in") == 3
    # backward: the dk/dv kernel loops over queries i >= j (a lower bound), the dq kernel
    # over keys j <= i (an upper bound)
    src = attention_bwd.triton(*_bwd_args(q, True), target="cpu")
    dkdv, dq = function(src, "fusile_k1"), function(src, "fusile_k2")
    assert "lo = tl.maximum(lo," in dkdv and "hi = tl.minimum(hi," not in dkdv
    assert "hi = tl.minimum(hi," in dq and "lo = tl.maximum(lo," not in dq
    plain = attention_bwd.triton(*_bwd_args(q), target="cpu")
    assert "hi = tl.minimum(hi," not in plain and "lo = tl.maximum(lo," not in plain


def test_chained_matmuls_are_not_attention_backward() -> None:
    """(a @ b) * 2 @ c has no probability tile: it stays two contraction kernels."""
    fn = fusile.from_source("def f(a, b, c):\n    return ((a @ b) * 2.0) @ c\n")
    a, b, c = (torch.randn(3, 20, 20) for _ in range(3))
    ex = fn.explain(a, b, c)
    assert [k.kind for k in ex.kernels] == ["contraction", "contraction"]
    assert_close(fn(a, b, c), (a.double() @ b.double() * 2) @ c.double(), torch.float32, 4)


def test_argument_errors() -> None:
    q = torch.randn(1, 3, 8, 16)
    with pytest.raises(fusile.FusileError, match="multiple"):
        attention(q, torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16))
    with pytest.raises(fusile.FusileError, match="batch, heads, seq"):
        attention(q[0], q[0], q[0])
    with pytest.raises(fusile.FusileError, match="different dtypes"):
        attention(q, q.double(), q)
    with pytest.raises(fusile.FusileError, match="alibi_slopes"):
        attention(q, q, q, alibi_slopes=torch.ones(2))
    with pytest.raises(fusile.FusileError, match="softcap"):
        attention(q, q, q, softcap=-1.0)


@pytest.mark.parametrize("target", ["h100", "mi300x"])
@pytest.mark.parametrize("d", [64, 128])
def test_cross_compiles_without_spills(target: str, d: int) -> None:
    """Forward and backward kernels, causal or not, with soft-capping and ALiBi."""
    q = torch.randn(1, 2, 1, 8, d, dtype=torch.bfloat16)
    sizes = {"D": d, "E": d}  # the head dims the annotations name
    for causal, capped, alibi, ragged in ((False, False, False, False),
                                          (True, False, False, False), (True, True, True, True)):
        fwd = list(_fwd_args(q, causal))
        fwd[-4:-1] = [capped, alibi, ragged]
        bwd = list(_bwd_args(q, causal))
        bwd[-4:-1] = [capped, alibi, ragged]
        kinds = []
        for compiled in (attention_fwd.compiled(*fwd), attention_bwd.compiled(*bwd)):
            for k in compile_for(compiled, targets.get(target), sizes=sizes).kernels:
                assert k.spills == 0, k.summary()
                kinds.append(k.name)
        assert len(kinds) == 6  # forward, its split-key pair, and the backward's three


@pytest.mark.parametrize("n_b,tiles_m,n2,groups", [
    (7, 5, 3000, 1), (256, 16, 2048, 8), (3, 1, 1 << 20, 3), (1, 64, 8192, 1),
    (40, 9, 3000, 2)])  # K and V: 256 bytes a key, 16 MiB a group; 40 = 21 + 19
def test_program_order_covers_every_row_block_once(n_b: int, tiles_m: int, n2: int,
                                                  groups: int) -> None:
    """The forward's program header (batch indices grouped for L2, the longest row blocks
    first), run as plain Python: every (batch index, row block) exactly once, longest first
    within each group."""
    q = torch.randn(1, 2, 1, 8, 64, dtype=torch.bfloat16)
    src = attention_fwd.triton(*_fwd_args(q, True), target="h100")
    head = src[src.index("    tiles_m ="):src.index("    b0 = ")]
    tl_ = types.SimpleNamespace(maximum=max, minimum=min, num_programs=lambda _: n_b * tiles_m)
    seen = []
    for pid in range(n_b * tiles_m):
        env = {"tl": tl_, "pid": pid, "n1": tiles_m * 64 - 5, "n2": n2, "BLOCK_M": 64,
               "BLOCK_D": 64, "BLOCK_E": 64}
        exec(textwrap.dedent(head), env)
        seen.append((env["pid_b"], env["pid_m"], env["g0"]))
    assert sorted((b, m) for b, m, _ in seen) == [(b, m) for b in range(n_b)
                                                  for m in range(tiles_m)]
    for g0 in {g for _, _, g in seen}:
        rows = [m for _, m, g in seen if g == g0]
        assert rows == sorted(rows, reverse=True)
    assert len({g for _, _, g in seen}) == groups


def test_cross_compile_keeps_head_masks_for_a_symbolic_head_dim() -> None:
    """A binary built for an unnamed head dim must serve any head dim up to its block."""
    q = torch.randn(1, 2, 1, 8, 64, dtype=torch.bfloat16)
    compiled = attention_fwd.compiled(*_fwd_args(q, True))
    t = targets.get("h100")
    even = [k.constexprs["EVEN_HEADS"] for k in compile_for(compiled, t).kernels]
    sizes = {"D": 64, "E": 64}  # the head dims the annotations name
    known = [k.constexprs["EVEN_HEADS"] for k in compile_for(compiled, t, sizes=sizes).kernels]
    assert even == [False] * 3 and known == [True] * 3  # with the split-key pair


# ----------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", CASES)
def test_cuda_matches_reference(name: str, dtype: torch.dtype) -> None:
    _h, _hk, _lq, _lk, d, e, _opts = CASES[name]
    _check(name, dtype, "cuda")
    if d > 1 and e > 1:  # longer sequences: the flash kernels
        try:
            _check(name, dtype, "cuda", scale_up=9)
        except Exception as err:
            if name not in _TRITON_CRASHES:
                raise
            pytest.xfail(f"{_TRITON_CRASHES[name]} ({type(err).__name__})")


# cases whose flash kernel Triton 3.6 fails to compile on the H200 (it prints "please share the
# reproducer above with Triton project"): found 2026-12-02, not caused by fusile's loop-bound
# clamps (it fails without them too); left to the decode work (issue 24)
_TRITON_CRASHES = {
    "decode_softcap_alibi": "Triton 3.6 crashes compiling soft-capping + ALiBi flash attention "
                            "at q 9 x kv 369, GQA 4/2, head dim 16",
}


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 96, 128, 256])
def test_cuda_head_dims(d: int) -> None:
    """Head dims 64 and 128 (tuned), 96 (padded to 128) and 256 (small tiles), causal, bf16,
    at a length that is not a multiple of any block."""
    torch.manual_seed(d)
    q, k, v = (torch.randn(2, 4, 1000, d, dtype=torch.bfloat16, device="cuda",
                           requires_grad=True) for _ in range(3))
    out = attention(q, k, v, causal=True)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = reference(*ref_in, causal=True)
    assert_close(out, ref, torch.bfloat16)
    do = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), do),
                         torch.autograd.grad(ref, ref_in, do.double()), strict=True):
        assert_close(got, want, torch.bfloat16, scale=1.5)


_GPU_TILES = sorted({(c.block_m, c.block_n) for d in (16, 64, 128) for t in ("h100", "mi300x")
                     for c in [*flash.candidates(targets.get(t), d, 1),
                               *flash_grad.candidates(targets.get(t), d)]})


@pytest.mark.parametrize("tile", _GPU_TILES, ids=lambda t: f"{t[0]}x{t[1]}")
def test_gpu_tiles_stay_in_bounds(tile: tuple[int, int], monkeypatch: pytest.MonkeyPatch,
                                  tmp_path) -> None:
    """Every tile shape the GPU targets may pick, forward and backward, on the bounds-checked
    interpreter, where masks leave most key or query blocks empty (a short query block against
    a long cache with a window, more queries than keys): a tile start below 0 (Triton's //
    truncates negative bounds toward 0) faulted on the H200 with an illegal address."""
    from fusile import config
    from fusile.bounded import Bounded
    from tests.bounds import checked

    cfg = tune.tile(*tile, warps=4, stages=1)
    monkeypatch.setattr(flash, "candidates", lambda t, d, rows=None: [cfg])
    monkeypatch.setattr(flash_grad, "candidates", lambda t, d: [cfg])
    for f in (attention_fwd, attention_bwd):  # compile afresh with this tile
        monkeypatch.setattr(f, "_cache", Bounded())
        monkeypatch.setattr(f, "_fast", Bounded())
    torch.manual_seed(0)
    cases = [(9, 630, {"window": 5}), (64, 630, {"window": 5, "causal": True}),
             (40, 9, {"causal": True}), (128, 129, {"causal": True})]
    with config.override(cache_dir=str(tmp_path)), checked() as launched:
        for lq, lk, opts in cases:
            q = torch.randn(1, 2, lq, 16, requires_grad=True)
            k, v = (torch.randn(1, 1, lk, 16, requires_grad=True) for _ in range(2))
            out = attention(q, k, v, **opts)
            out.backward(torch.randn_like(out))
            ref = reference(q.detach(), k.detach(), v.detach(), **opts)
            assert_close(out, ref, torch.float32, scale=4)  # rows that see no key: zeros
    assert len(launched) >= 3 * len(cases)


def test_rows_that_see_no_key_are_zeros_with_no_gradient() -> None:
    """A row left no key, by a short cache (cache_seqlens) or a causal mask over more queries
    than keys, is zeros as in sdpa and FlashAttention (it was NaN), and passes no gradient."""
    torch.manual_seed(0)
    q = torch.randn(2, 2, 3, 8, requires_grad=True)
    k, v = (torch.randn(2, 1, 6, 8, requires_grad=True) for _ in range(2))
    lens = torch.tensor([0, 2])
    out = attention(q, k, v, causal=True, cache_seqlens=lens)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert not out[0].any()  # no cache at all
    # sequence 1 holds 2 keys; its 3 query rows end there: row 0 sees none, rows 1-2 see 1-2
    want = reference(q[1:].detach(), k[1:, :, :2].detach(), v[1:, :, :2].detach(), causal=True)
    assert_close(out[1:], want, torch.float32, scale=4)
    assert not out[1, :, 0].any()
    assert not dq[0].any() and not dq[1, :, 0].any()
    assert torch.isfinite(dk).all() and torch.isfinite(dv).all()
    assert not dk[1, :, 2:].any()  # past the cache's end
