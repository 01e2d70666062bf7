"""On-disk cache of generated Triton modules under FUSILE_CACHE_DIR/kernels.

Files are written atomically (a temporary file, then os.replace) and carry a checksum of their
body; an entry that does not match is rewritten, never trusted. Compiled binaries live in
Triton's own cache, keyed by this source.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path
from types import ModuleType

from fusile import config

_loaded: dict[str, ModuleType] = {}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def cache_dir() -> Path:
    d = Path(config.get("cache_dir")) / "kernels"
    d.mkdir(parents=True, exist_ok=True)
    return d


def module_path(source: str) -> Path:
    import triton

    key = _digest(source + triton.__version__)[:32]
    return cache_dir() / f"fusile_{key}.py"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_module(source: str) -> ModuleType:
    """Import the generated module for `source` (writing it to the cache if needed)."""
    path = module_path(source)
    key = str(path)
    if key in _loaded:
        return _loaded[key]
    text = f"# fusile-cache sha256={_digest(source)}\n{source}"
    try:
        valid = path.read_text() == text
    except (OSError, UnicodeDecodeError):
        valid = False
    if not valid:  # missing, stale or corrupt: (re)write it
        _write_atomic(path, text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _loaded[key] = module
    return module
