"""Attention for decoding: a few query rows against a KV cache, with per-sequence cache lengths
(cache_seqlens), GQA, causal, window, soft-capping and ALiBi, forward and backward, against a
float64 reference that slices each sequence's cache (interpreter on CPU, CUDA with -m gpu);
the split-key (flash-decoding) path, which a GPU takes by itself at kv_len 1000 here and the
interpreter when told."""

from __future__ import annotations

import functools

import pytest
import torch

import fusile
from fusile.stdlib.attention import attention
from tests.numerics import assert_close
from tests.stdlib.test_attention import NO_MASK, check_against, reference

# q_len x kv_len, as the decode issue lists them (q_len <= kv_len: every row sees a key)
GRID = [(1, 1), (1, 37), (2, 37), (7, 37), (1, 1000), (7, 1000), (64, 1000)]
OPTIONS = {"causal": {"causal": True}, "window": {"causal": True, "window": 5},
           "softcap_alibi": {"softcap": 3.0, "alibi": True}}


def _inputs(lq: int, lk: int, dtype: torch.dtype, device: str, grad: bool, seed: int):
    torch.manual_seed(seed)
    b, h, hk, d = 3, 4, 2, 16  # GQA: two query heads share a K/V head
    q = torch.randn(b, h, lq, d, dtype=dtype, device=device, requires_grad=grad)
    k, v = (torch.randn(b, hk, lk, d, dtype=dtype, device=device, requires_grad=grad)
            for _ in range(2))
    # one full cache, one of q_len keys, one in between: each sequence's rows see >= 1 key
    lens = torch.tensor([lk, lq, (lk + lq) // 2], dtype=torch.int32, device=device)
    return q, k, v, lens


def ragged_reference(q, k, v, lens, **opts) -> torch.Tensor:
    """Each sequence against the first lens[b] keys of its cache, in float64."""
    outs = [reference(q[i:i + 1], k[i:i + 1, :, :n], v[i:i + 1, :, :n], **opts)
            for i, n in enumerate(lens.tolist())]
    return torch.cat(outs)


def _check(lq: int, lk: int, option: str, dtype: torch.dtype, device: str,
           grad: bool = True) -> None:
    """Forward and (with grad) dq, dk, dv; keys past a cache's end get a zero gradient."""
    q, k, v, lens = _inputs(lq, lk, dtype, device, grad, lq * 1000 + lk)
    check_against(functools.partial(ragged_reference, lens=lens), q, k, v,
                  dict(OPTIONS[option]), grad, cache_seqlens=lens)


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("lq,lk", GRID, ids=lambda x: str(x))
def test_interpreter_decode_matches_reference(lq: int, lk: int, option: str) -> None:
    _check(lq, lk, option, torch.float32, "cpu", grad=lk < 1000)  # (the GPU runs every grad)


@pytest.mark.parametrize("lq,lk,option", [(1, 300, "causal"), (7, 300, "window"),
                                          (1, 37, "softcap_alibi"), (64, 1000, "causal")])
def test_split_keys_match_reference(lq: int, lk: int, option: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Flash-decoding (each query block's keys over several programs, then a combine), forced
    on the interpreter: forward, and the backward that reads its log-sum-exp; the split path
    is the one taken."""
    from fusile import config
    from fusile.backends.triton.kinds import flash

    taken = []
    split = flash.launch_split_keys

    def spy(prog, launch, plan, *rest):
        taken.append(plan[1])  # the split count
        return split(prog, launch, plan, *rest)

    monkeypatch.setattr(flash, "launch_split_keys", spy)
    with config.override(attn_splits=3):
        _check(lq, lk, option, torch.float32, "cpu", grad=lk < 1000)
    assert taken and all(n > 1 for n in taken)  # 3, or one a key tile when fewer


def test_split_count_follows_the_gpu() -> None:
    """Splits fill about two programs per SM when the row blocks leave SMs idle, keep four
    key tiles each, and the interpreter never splits unless told."""
    from fusile.backends import targets
    from fusile.backends.triton.tiled import split_count as splits

    h100 = targets.get("h100")
    assert splits(h100, 32, 4096, 64) == 9  # batch 1, 32 heads: 2 * 132 / 32
    assert splits(h100, 32, 256, 64) == 1  # four tiles: too short to split
    assert splits(h100, 512, 1 << 17, 64) == 1  # the row blocks fill the GPU
    assert splits(targets.get("cpu"), 1, 1 << 17, 64) == 1
    assert splits(targets.get("cpu"), 1, 300, 64, forced=9) == 5  # a split a tile


def test_one_query_row_is_one_flash_kernel() -> None:
    """A query length of 1 (and a key length or head dim of 1) is an ordinary size of the
    flash kernel, not a broadcast axis that sends the chain to the general kernels."""
    from fusile.stdlib.attention import attention_fwd

    q = torch.randn(2, 2, 4, 1, 1)
    k = torch.randn(2, 2, 1, 1, 1)
    args = (q, k, k, torch.ones(2, 4), torch.ones(2, dtype=torch.int32), NO_MASK, 1.0, 0.0,
            True, 0, False, False, True, False, False)
    assert [x.kind for x in attention_fwd.explain(*args).kernels] == ["attention"]


def test_cache_lengths_bound_the_key_loop() -> None:
    """A per-sequence length bounds the key loop (a short sequence in a long static cache
    visits its own keys only) and the tiles below it run without masks."""
    from fusile.stdlib.attention import attention_fwd

    q = torch.randn(2, 2, 4, 1, 16)
    k = torch.randn(2, 2, 1, 64, 16)
    args = (q, k, k, torch.ones(2, 4), torch.ones(2, dtype=torch.int32), NO_MASK, 1.0, 0.0,
            True, 0, False, False, True, False, False)
    src = attention_fwd.triton(*args, target="cpu")
    assert "lens_bound = tl.load(" in src
    assert "hi = tl.minimum(hi, -((-(lens_bound))) + 0)" in src
    assert "# whole tiles: no masks" in src


def test_cache_seqlens_errors() -> None:
    q, k, v, lens = _inputs(1, 8, torch.float32, "cpu", False, 0)
    with pytest.raises(fusile.FusileError, match=r"cache_seqlens must be \(3,\) int32"):
        attention(q, k, v, cache_seqlens=lens[:2])
    with pytest.raises(fusile.FusileError, match="cache_seqlens must be"):
        attention(q, k, v, cache_seqlens=lens.float())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("lq,lk", GRID, ids=lambda x: str(x))
def test_cuda_decode_matches_reference(lq: int, lk: int, option: str, dtype: torch.dtype
                                       ) -> None:
    _check(lq, lk, option, dtype, "cuda")


@pytest.mark.gpu
def test_cuda_graph_decode_step() -> None:
    """A decode step (write this step's K/V into a static cache in place, attend over each
    sequence's length) captured in a CUDA graph and replayed against a fresh eager step."""
    torch.manual_seed(0)
    b, h, hk, n, d = 4, 8, 2, 2048, 64  # long enough to split the keys (flash-decoding)
    dt = torch.bfloat16
    kc, vc = (torch.randn(b, hk, n, d, device="cuda", dtype=dt) for _ in range(2))
    q, kn, vn = (torch.randn(b, x, 1, d, device="cuda", dtype=dt) for x in (h, hk, hk))
    pos = torch.tensor([5, 1000, 17, 2047], device="cuda")

    def step() -> torch.Tensor:
        rows = torch.arange(b, device="cuda")
        kc[rows, :, pos] = kn[:, :, 0]
        vc[rows, :, pos] = vn[:, :, 0]
        return attention(q, kc, vc, causal=True, cache_seqlens=(pos + 1).to(torch.int32))

    step()  # compile and tune outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for _ in range(2):
        q.copy_(torch.randn_like(q))
        kn.copy_(torch.randn_like(kn))
        pos.copy_(torch.randint(0, n, (b,), device="cuda"))
        graph.replay()
        want = ragged_reference(q.double(), kc.double(), vc.double(), pos + 1, causal=True)
        assert_close(out, want, dt)
