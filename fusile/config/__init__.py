"""The one typed registry of fusile's environment variables.

Every knob is declared once here, read lazily (so a test can change the environment), and can be
overridden for a scope with `config.override(debug="mlir")`. Nothing else in fusile reads
`os.environ`. `python -m fusile.config` prints the table (config/__main__.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _split_csv(text: str) -> frozenset[str]:
    return frozenset(part.strip().lower() for part in text.split(",") if part.strip())


def _as_bool(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on"}


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        v = text.strip().lower()
        if v not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return v

    return parse


@dataclass(frozen=True)
class Knob:
    env: str
    parse: Callable[[str], Any]
    default: Callable[[], Any]
    doc: str


KNOBS: dict[str, Knob] = {
    "debug": Knob(
        "FUSILE_DEBUG", _split_csv, frozenset,
        "comma list of stages to dump to stderr as they are made: ast, mlir, linalg, fused, plan, "
        "triton (or 'all')",
    ),
    "cache_dir": Knob(
        "FUSILE_CACHE_DIR", Path, lambda: Path.home() / ".cache" / "fusile",
        "where generated kernels and tuning results are cached",
    ),
    "frontend_debug": Knob(
        "FUSILE_FRONTEND_DEBUG", _as_bool, lambda: False,
        "re-raise the raw internal exception instead of a FusileError (for fusile developers)",
    ),
    "max_row_block": Knob(
        "FUSILE_MAX_ROW_BLOCK", int, lambda: 0,
        "longest row a reduction keeps in registers before it loops (0: per-target default)",
    ),
    "row_programs": Knob(
        "FUSILE_ROW_PROGRAMS", int, lambda: 0,
        "rows+columns kernels (a norm backward's dx with dw/db): persistent programs per SM/CU "
        "(0: as many as fit at once)",
    ),
    "target": Knob(
        "FUSILE_TARGET", str, lambda: "auto",
        "target for calls on tensors: auto (from the device), a name from `fusile targets`, "
        "reference (the float64 oracle) or mlir-cpu (MLIR's JIT, CPU tensors)",
    ),
    "fast_launch": Knob(
        "FUSILE_FAST_LAUNCH", _as_bool, lambda: True,
        "launch cached compiled kernels directly instead of through triton.jit's binder, and "
        "replay a repeated call's launches (same argument layout) without recomputing them",
    ),
    "fast_replay": Knob(
        "FUSILE_FAST_REPLAY", _as_bool, lambda: False,
        "a repeated call's launches run as generated straight-line code, calling Triton "
        "3.6's C launch function directly with pointers as addresses (no launcher object, "
        "no per-pointer driver query); off until it has passed the GPU suite (written and "
        "tested on a CPU only)",
    ),
    "horizontal": Knob(
        "FUSILE_HORIZONTAL", _as_bool, lambda: True,
        "launch consecutive independent pointwise kernels (rope's q and k, unrelated outputs) "
        "as one kernel; 0 launches each on its own",
    ),
    "attn_splits": Knob(
        "FUSILE_ATTN_SPLITS", int, lambda: 0,
        "flash attention: split each query block's keys over this many programs "
        "(flash-decoding); 0 chooses from the shape and the GPU, 1 never splits",
    ),
    "dot_rows_splits": Knob(
        "FUSILE_DOT_ROWS_SPLITS", int, lambda: 0,
        "contractions whose rows are reduced on chip (a linear layer's cross-entropy): split "
        "each row block's columns over this many programs; 0 chooses from the shape and the "
        "GPU, 1 never splits",
    ),
    "max_head_dim": Knob(
        "FUSILE_MAX_HEAD_DIM", int, lambda: 0,
        "flash attention kernels hold head dims up to this on chip (0: 256 on a GPU, no limit "
        "on the interpreter); a call with a wider one runs the plan without flash kernels",
    ),
    "ce_chunk_mib": Knob(
        "FUSILE_CE_CHUNK_MIB", int, lambda: 256,
        "linear cross-entropy: MiB of logits one chunk of rows may hold (its gradient as "
        "much again); up to 1024 rows, as a weight-gradient matmul over fewer rows runs "
        "below speed (0: Liger's rule, a chunk's logits about the input's size)",
    ),
    "tune": Knob(
        "FUSILE_TUNE", _choice("on", "quiet", "off"), lambda: "on",
        "contraction configs: on (time candidates on first use of a shape, say so on stderr), "
        "quiet (the same, silently) or off (the rule-based pick)",
    ),
    "tf32": Knob(
        "FUSILE_TF32", _as_bool, lambda: False,
        "let float32 matmuls run at TF32 precision on tensor cores (IEEE float32 by default)",
    ),
    "cpu_threads": Knob(
        "FUSILE_CPU_THREADS", int, lambda: 0,
        "mlir-cpu: threads a row-separable call runs its blocks of rows on (0: torch's "
        "get_num_threads(); 1: the calling thread only)",
    ),
    "verify": Knob(
        "FUSILE_VERIFY", _as_bool, lambda: True,
        "verify the MLIR module after every pass (on by default; cheap at DSL sizes)",
    ),
}

_overrides: dict[str, Any] = {}

# knobs that choose a kernel's launch config or which kernels launch together: part of the
# program key (backends/run.py) and of the call key (backends/dispatch.py), so setting one
# between calls takes effect
SCHEDULE_KNOBS = ("max_row_block", "row_programs", "attn_splits", "dot_rows_splits",
                  "max_head_dim", "horizontal")


def get(name: str) -> Any:
    """The current value of knob `name`: a scoped override, else the environment, else default."""
    if name in _overrides:
        return _overrides[name]
    knob = KNOBS[name]
    raw = os.environ.get(knob.env)
    return knob.parse(raw) if raw not in (None, "") else knob.default()


def raw(*names: str) -> tuple:
    """The knobs as set, unparsed: an override, else the environment's value, else None. A
    cheap key for what depends on them (get parses)."""
    return tuple(_overrides[n] if n in _overrides else _env_get(_ENV_KEYS[n]) for n in names)


def reader(*names: str) -> Callable[[], tuple]:
    """raw(*names) as a function of no arguments, for a key read on every fused call: with
    no override in force (the steady state) one C-level pass over the environment."""
    keys = tuple(_ENV_KEYS[n] for n in names)

    def read() -> tuple:
        return tuple(map(_env_get, keys)) if not _overrides else raw(*names)

    return read


# os.environ.get encodes the name and decodes the value on every read; on POSIX the mapping
# keeps its bytes in `_data`, read directly where it exists (a private detail of CPython's
# os module, unchanged for many releases; anything else takes the public path)
_ENV_DATA = getattr(os.environ, "_data", None)
if os.name == "posix" and isinstance(_ENV_DATA, dict):
    _ENV_KEYS: dict[str, Any] = {n: os.fsencode(k.env) for n, k in KNOBS.items()}
    _env_get: Callable[[Any], Any] = _ENV_DATA.get
else:
    _ENV_KEYS = {n: k.env for n, k in KNOBS.items()}
    _env_get = os.environ.get


def debug_enabled(stage: str) -> bool:
    stages = get("debug")
    return stage in stages or "all" in stages


@contextlib.contextmanager
def override(**values: Any) -> Iterator[None]:
    """Temporarily set knobs (by registry name), e.g. `with override(debug="ast,mlir"):`."""
    saved = dict(_overrides)
    for name, value in values.items():
        if name not in KNOBS:
            raise KeyError(f"unknown fusile knob {name!r}; known: {sorted(KNOBS)}")
        knob = KNOBS[name]
        _overrides[name] = knob.parse(value) if isinstance(value, str) else value
    try:
        yield
    finally:
        _overrides.clear()
        _overrides.update(saved)


def table() -> str:
    """Every knob: its variable, default, value now (from the environment) and meaning."""
    rows = [("variable", "default", "now", "meaning")]
    for name, k in KNOBS.items():
        rows.append((k.env, _show(k.default()), _show(get(name)), k.doc))
    w0, w1, w2 = (max(len(r[i]) for r in rows) for i in range(3))
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c:<{w2}}  {d}" for a, b, c, d in rows)


def _show(value: Any) -> str:
    if isinstance(value, frozenset):
        return ",".join(sorted(value)) or "(none)"
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
