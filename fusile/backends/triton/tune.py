"""A tiled kernel's launch config (DotConfig: contractions, flash attention forward and
backward), and a small tuner that remembers its winners on disk.

Each kind lists its configs worth timing, the rule-based pick first (kinds/dot.py,
kinds/flash.py, kinds/flash_grad.py). On a GPU the first call of a tiled kernel for a shape
bucket (sizes rounded up to powers of two) times each candidate with triton.testing.do_bench
on the call's own tensors and keeps the fastest in FUSILE_CACHE_DIR/tuning/<target>.json;
later calls and later processes reuse it. FUSILE_TUNE=off uses the rule-based pick without
timing. This is deliberately small: a fuller autotuner can replace `best` without touching
the code generator or the launcher.
"""

from __future__ import annotations

import json
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


@dataclass(frozen=True, kw_only=True)
class DotConfig:
    """A tiled kernel's tile, warps and software-pipeline stages, and AMD's compiler options.
    Keyword-only (tile() and amd_tile() spell the usual ones); the fields are also the JSON
    keys of the tuning tables on disk."""
    block_m: int
    block_n: int
    block_k: int = 0  # contractions: the reduction tile (flash kernels hold whole head dims)
    num_warps: int = 4
    num_stages: int = 1
    group_m: int = 8  # contractions: row tiles grouped for L2 reuse
    waves_per_eu: int = 0  # AMD only: 0 leaves the register budget to the compiler
    matrix_instr_nonkdim: int = 0  # AMD only: 16 for 16x16 MFMA
    kpack: int = 1  # AMD only

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


def tile(block_m: int, block_n: int, block_k: int = 0, *, warps: int, stages: int,
         group_m: int = 8) -> DotConfig:
    """An NVIDIA (or interpreter) config."""
    return DotConfig(block_m=block_m, block_n=block_n, block_k=block_k, num_warps=warps,
                     num_stages=stages, group_m=group_m)


def amd_tile(block_m: int, block_n: int, block_k: int = 0, *, warps: int, stages: int,
             waves: int, kpack: int = 1, group_m: int = 8) -> DotConfig:
    """An AMD config: 16x16 MFMA, `waves` per EU (0: the compiler's choice)."""
    return DotConfig(block_m=block_m, block_n=block_n, block_k=block_k, num_warps=warps,
                     num_stages=stages, group_m=group_m, waves_per_eu=waves,
                     matrix_instr_nonkdim=16, kpack=kpack)


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
