"""Contraction configs per target, and a small tuner that remembers its winners on disk.

`candidates(target, dtype, m, n, k)` lists the configs worth timing, the rule-based pick first.
On a GPU the first call of a contraction kernel for a shape bucket (sizes rounded up to powers
of two) times each candidate with triton.testing.do_bench on the call's own tensors and keeps
the fastest in FUSILE_CACHE_DIR/tuning/<target>.json; later calls and later processes reuse it.
FUSILE_TUNE=off uses the rule-based pick without timing. This is deliberately small: a fuller
autotuner can replace `best` without touching the code generator or the launcher.

NVIDIA (Hopper): 128x256 tiles with 8 warps and 3-4 stages for large products, as in Triton's
matmul tutorial (256x128 spills with an epilogue); smaller tiles and more stages when the grid
would not fill the SMs.
AMD (CDNA3), after AMD's Triton optimisation guide: BLOCK_K 64, num_stages 2 (the stream
pipeliner wants 2 for a single GEMM), matrix_instr_nonkdim 16 (16x16 MFMA), kpack 2, and
waves_per_eu to trade registers for occupancy.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fusile import config
from fusile.backends.targets import Target
from fusile.backends.triton.schedule import pow2


@dataclass(frozen=True)
class DotConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8
    waves_per_eu: int = 0  # AMD only
    matrix_instr_nonkdim: int = 0  # AMD only
    kpack: int = 1  # AMD only

    def constexprs(self, k: int, use_i64: bool) -> dict[str, Any]:
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k,
                "GROUP_M": self.group_m, "EVEN_K": k % self.block_k == 0, "USE_I64": use_i64}

    def options(self, backend: str) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if backend == "hip":
            opts.update(waves_per_eu=self.waves_per_eu, kpack=self.kpack,
                        matrix_instr_nonkdim=self.matrix_instr_nonkdim)
        return opts

    def __str__(self) -> str:
        s = (f"{self.block_m}x{self.block_n}x{self.block_k} w{self.num_warps} "
             f"s{self.num_stages}")
        if self.matrix_instr_nonkdim:
            s += f" wpe{self.waves_per_eu} mfma{self.matrix_instr_nonkdim} kp{self.kpack}"
        return s


def _cuda(dtype: str, tiles: Callable[[int, int], int], sms: int) -> list[DotConfig]:
    if dtype == "f32":  # IEEE float32 runs on FMA units: smaller tiles, deeper pipelines
        return [DotConfig(64, 64, 32, 4, 3), DotConfig(128, 64, 32, 4, 3),
                DotConfig(64, 128, 32, 4, 3), DotConfig(32, 64, 32, 4, 3)]
    big = [DotConfig(128, 256, 64, 8, 3), DotConfig(128, 128, 64, 8, 4),
           DotConfig(128, 256, 32, 8, 4), DotConfig(128, 256, 64, 8, 4)]
    small = [DotConfig(128, 64, 64, 4, 4), DotConfig(64, 128, 64, 4, 4),
             DotConfig(64, 64, 64, 4, 4)]
    if tiles(128, 256) >= sms:
        return big + small
    if tiles(128, 128) >= sms:
        return big[1:2] + small + big[:1] + big[2:]
    return small + big[1:2]


def _hip(dtype: str, tiles: Callable[[int, int], int], cus: int, prologue: bool
         ) -> list[DotConfig]:
    k = 32 if dtype == "f32" else 64
    # waves_per_eu=0 leaves the register budget to the compiler (AGPRs hold the accumulator);
    # 2 asks for two waves per SIMD, which heavy prologues cannot always afford
    big = [DotConfig(256, 128, k, 8, 2, 8, 0, 16, 2), DotConfig(128, 256, k, 8, 2, 8, 2, 16, 2),
           DotConfig(128, 128, k, 4, 2, 8, 2, 16, 2), DotConfig(256, 128, k, 8, 2, 8, 2, 16, 2)]
    small = [DotConfig(64, 64, k, 4, 2, 8, 0, 16, 1), DotConfig(128, 64, k, 4, 2, 8, 2, 16, 2)]
    if tiles(256, 128) >= cus and not prologue:
        return big + small
    if prologue:  # operands computed in registers: 128x128 tiles over 8 warps
        return [DotConfig(128, 128, k, 8, 2, 8, 0, 16, 2), *big, *small]
    return [big[2], *small, big[0]]


def candidates(target: Target, dtype: str, m: int, n: int, k: int, batch: int = 1,
               prologue: bool = False) -> list[DotConfig]:
    """Configs to try for an (m x k) @ (k x n) product, `batch` of them; the first is the
    rule-based pick. `prologue`: the operands are computed from their loads (not only cast)."""
    del k

    def tiles(bm: int, bn: int) -> int:
        return batch * -(-m // bm) * -(-n // bn)

    if target.backend == "interpreter":
        return [DotConfig(32, 32, 32, 4, 1, 4)]
    if target.backend == "hip":
        return _hip(dtype, tiles, target.compute_units, prologue)
    return _cuda(dtype, tiles, target.compute_units)


def bucket(m: int, n: int, k: int, batch: int) -> str:
    return f"{pow2(m)}x{pow2(n)}x{pow2(k)}" + ("b" if batch > 1 else "")


MARGIN = 0.02  # a later candidate must beat an earlier one by this much to be chosen
ROUNDS = 2  # timing rounds over all candidates; each keeps its best (noise only slows)


class Tuner:
    """Winners per (target, kernel, shape bucket), in memory and on disk."""

    def __init__(self) -> None:
        self.mem: dict[str, dict[str, DotConfig]] = {}

    def _path(self, target: str) -> Path:
        return Path(config.get("cache_dir")) / "tuning" / f"{target}.json"

    def _table(self, target: str) -> dict[str, DotConfig]:
        if target not in self.mem:
            table: dict[str, DotConfig] = {}
            try:
                raw = json.loads(self._path(target).read_text())
                table = {key: DotConfig(**v) for key, v in raw.items()}
            except (OSError, ValueError, TypeError):
                pass  # missing or unreadable: tune again
            self.mem[target] = table
        return self.mem[target]

    def lookup(self, target: str, key: str) -> DotConfig | None:
        return self._table(target).get(key)

    def remember(self, target: str, key: str, cfg: DotConfig) -> None:
        table = self._table(target)
        table[key] = cfg
        path = self._path(target)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({k: asdict(v) for k, v in sorted(table.items())}, f, indent=1)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache: keep the winner for this process only

    def best(self, target: Target, key: str, cands: list[DotConfig], size: str,
             time: Callable[[DotConfig], float],
             prepare: Callable[[DotConfig], None] | None = None) -> DotConfig:
        """The remembered winner for key, else time the candidates (if tuning is on).
        `prepare` (compile and run once) goes over every candidate before the first is timed,
        so no timing follows a compile that left the GPU idle (and its clocks down)."""
        got = self.lookup(target.name, key)
        if got is not None:
            return got
        mode = config.get("tune")
        if mode == "off" or len(cands) == 1:
            return cands[0]
        loud = mode != "quiet"
        if loud:
            print(f"fusile: tuning {size} on {target.name} "
                  f"({len(cands)} configs; FUSILE_TUNE=off skips this)", file=sys.stderr)
        ready = []
        for c in cands:
            try:
                if prepare is not None:
                    prepare(c)
                ready.append(c)
            except Exception as exc:  # a config this GPU or compiler cannot take
                if loud:
                    print(f"fusile:   {c}: skipped ({type(exc).__name__})", file=sys.stderr)
        # rounds over every candidate, each keeping its best: a transient slowdown (clocks,
        # a neighbour) hits one timing, not one config (on the H100 a single pass once
        # picked a config 13% slower for a 2.6 ms attention kernel)
        best: dict[DotConfig, float] = {}
        live = list(ready)
        for _ in range(ROUNDS):
            for c in list(live):
                try:
                    ms = time(c)
                except Exception as exc:  # a config this GPU cannot run (shared memory, ...)
                    if loud:
                        print(f"fusile:   {c}: skipped ({type(exc).__name__})", file=sys.stderr)
                    live.remove(c)
                    continue
                best[c] = min(ms, best.get(c, ms))
        if loud:
            for c, ms in best.items():
                print(f"fusile:   {c}: {ms * 1e3:.1f} us", file=sys.stderr)
        results = [(best[c], c) for c in ready if c in best]
        if not results:
            return cands[0]
        # the earliest candidate (lists are ordered by prior measurements) within MARGIN of
        # the fastest: run-to-run noise on a GPU is a few percent, and a near tie decided by
        # it flips between runs (seen on the H100: 1-4% between identical timings)
        fastest = min(r[0] for r in results)
        ms, winner = next(r for r in results if r[0] <= fastest * (1 + MARGIN))
        if loud:
            print(f"fusile:   best {winner}: {ms * 1e3:.1f} us", file=sys.stderr)
        self.remember(target.name, key, winner)
        return winner


TUNER = Tuner()


def attention_candidates(target: Target, d: int, rows: int | None = None) -> list[DotConfig]:
    """Flash-attention tiles (block_m query rows, block_n keys; block_k unused), in the order
    H100 sweeps ranked them (benchmarks/RESULTS.md): at head dim 64, 128 query rows over 8
    warps (two warpgroups of 64 rows) against 64 keys; at 128, that and 64 x 64 over 4 warps
    within a few percent of each other, 64 x 64 ahead when causal. AMD, after AMD's
    flash-attention guidance: 128 x 64, 4 warps, one stage, waves_per_eu 2. With `rows` (the
    query rows of a batch index) at most 16, as in decoding, 16-row tiles (the smallest a
    tensor-core dot takes) come first: a 128-row tile would compute 8-128x the scores for
    nothing and hold registers that deeper key pipelining can use."""
    if target.backend == "interpreter":
        return [DotConfig(32, 32, 0, 4, 1)]
    if rows is not None and rows <= 16:
        if target.backend == "hip":
            few = [DotConfig(16, 64, 0, 4, 1, 1, 2, 16, 1),
                   DotConfig(16, 128, 0, 4, 1, 1, 2, 16, 1)]
        else:
            few = [DotConfig(16, 64, 0, 4, 4), DotConfig(16, 128, 0, 4, 3),
                   DotConfig(16, 64, 0, 4, 3)]
        return few + attention_candidates(target, d)
    if target.backend == "hip":
        return [DotConfig(128, 64, 0, 4, 1, 1, 2, 16, 1), DotConfig(128, 32, 0, 4, 1, 1, 2, 16, 1),
                DotConfig(64, 64, 0, 4, 1, 1, 2, 16, 1)]
    if d <= 64:
        return [DotConfig(128, 64, 0, 8, 4), DotConfig(128, 64, 0, 8, 3),
                DotConfig(64, 64, 0, 4, 3), DotConfig(128, 64, 0, 4, 3)]
    if d <= 128:
        return [DotConfig(64, 64, 0, 4, 3), DotConfig(128, 64, 0, 8, 3),
                DotConfig(128, 64, 0, 8, 4), DotConfig(128, 128, 0, 8, 3)]
    return [DotConfig(64, 64, 0, 4, 2), DotConfig(128, 32, 0, 8, 2), DotConfig(64, 32, 0, 4, 2)]


def attention_splits(target: Target, programs: int, keys: int, block_n: int, forced: int = 0
                     ) -> int:
    """Programs per row block for a flash kernel (flash-decoding, codegen_decode.py): enough
    for about two programs per SM when the row blocks alone leave SMs idle (decoding at small
    batch), each keeping at least four key tiles, so the partials (one row block's max, sum
    and accumulator per split) stay small next to the keys read. `forced` (the attn_splits
    knob) overrides the choice, up to one split per key tile; the interpreter never splits
    unless forced."""
    tiles = max(1, math.ceil(keys / block_n))
    if forced > 0:
        return min(forced, tiles)
    if target.backend == "interpreter" or programs >= target.compute_units:
        return 1
    return max(1, min(math.ceil(2 * target.compute_units / programs), tiles // 4))


def attention_constexprs(cfg: DotConfig, d: int, e: int, keys: int | None, use_i64: bool
                         ) -> dict[str, Any]:
    """A flash kernel's constexprs: the head dims padded to powers of two (at least 16),
    whether both are their blocks (then the head-dim masks fold away), and whether BLOCK_N
    divides the key length `keys` (None: not known, as ahead of time; then the masks at the
    end stay)."""
    bd, be = max(16, pow2(d)), max(16, pow2(e))
    return {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_D": bd, "BLOCK_E": be,
            "EVEN_HEADS": d == bd and e == be,
            "EVEN_N": keys is not None and keys % cfg.block_n == 0, "USE_I64": use_i64}


def grad_candidates(target: Target, d: int) -> list[DotConfig]:
    """Flash-backward tiles (block_m kept positions, block_n looped ones). Each program holds
    one float32 accumulator per out dot (two for dk and dv) of block_m x d, so the kept block
    is 64-128 with a short looped block, as in FlashAttention 2's backward. Hopper, in the
    order the H100's tuning logs ranked them: 64 x 128 first at head dim 64, 64 x 64 at 128
    (128 x 32 over 4 warps is left out: Triton 3.6's ptxas crashes on it at head dim 64).
    AMD: 4 warps, one stage, waves_per_eu 1 (register-heavy), after AMD's Triton guidance."""
    if target.backend == "interpreter":
        return [DotConfig(32, 16, 0, 4, 1)]
    if target.backend == "hip":
        return [DotConfig(64, 32, 0, 4, 1, 1, 1, 16, 1), DotConfig(128, 32, 0, 4, 1, 1, 1, 16, 1),
                DotConfig(64, 64, 0, 4, 1, 1, 1, 16, 1)]
    if d <= 64:
        return [DotConfig(64, 128, 0, 4, 2), DotConfig(128, 64, 0, 8, 3),
                DotConfig(64, 64, 0, 4, 3), DotConfig(64, 128, 0, 4, 3),
                DotConfig(128, 64, 0, 8, 2), DotConfig(64, 64, 0, 4, 2),
                DotConfig(128, 32, 0, 8, 3)]
    if d <= 128:
        return [DotConfig(64, 64, 0, 4, 2), DotConfig(64, 32, 0, 4, 3),
                DotConfig(64, 32, 0, 4, 2), DotConfig(128, 64, 0, 8, 2),
                DotConfig(128, 32, 0, 8, 3)]
    return [DotConfig(64, 32, 0, 4, 1), DotConfig(32, 32, 0, 4, 2), DotConfig(64, 16, 0, 4, 1)]


def grad_constexprs(cfg: DotConfig, heads: list[int], looped: int | None, use_i64: bool
                    ) -> dict[str, Any]:
    """A flash backward kernel's constexprs: each head dim padded to a power of two >= 16,
    whether every head dim is its block, and whether BLOCK_N divides the looped length
    (None: not known)."""
    out: dict[str, Any] = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n}
    for x, h in enumerate(heads):
        out[f"BLOCK_H{x}"] = max(16, pow2(h))
    even = all(h == max(16, pow2(h)) for h in heads)
    return out | {"EVEN_HEADS": even, "EVEN_N": looped is not None and looped % cfg.block_n == 0,
                  "USE_I64": use_i64}
