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
import warnings
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
    return cache_dir() / module_path_name(source)


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
    """Import the generated module for `source` (writing it to the cache if needed). An
    unusable cache dir (read-only, a file, an entry that is a directory) falls back to a
    temporary directory, then to memory, with one warning."""
    text = f"# fusile-cache sha256={_digest(source)}\n{source}"
    try:
        path = module_path(source)
        if str(path) in _loaded:
            return _loaded[str(path)]
        _ensure(path, text)
    except OSError as exc:
        path = _fallback(exc) / module_path_name(source)
        if str(path) in _loaded:
            return _loaded[str(path)]
        try:
            _ensure(path, text)
        except OSError:  # no writable directory at all
            return _in_memory(path, text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _loaded[str(path)] = module
    return module


def module_path_name(source: str) -> str:
    import triton

    return f"fusile_{_digest(source + triton.__version__)[:32]}.py"


def _ensure(path: Path, text: str) -> None:
    """path holds text: missing, stale or corrupt entries are (re)written, never trusted."""
    try:
        valid = path.read_text() == text
    except (OSError, UnicodeDecodeError):
        valid = False
    if not valid:
        _write_atomic(path, text)


_fallback_dir: list[Path] = []


def _fallback(exc: OSError) -> Path:
    """A temporary directory for this process (warned about once), or, where none can be
    made, a path that only names modules kept in memory."""
    if not _fallback_dir:
        try:
            d = Path(tempfile.mkdtemp(prefix="fusile-kernels-"))
            where = f"caching in {d} for this process instead"
        except OSError:
            d = Path(tempfile.gettempdir()) / "fusile-in-memory"
            where = "keeping generated kernels in memory"
        _fallback_dir.append(d)
        warnings.warn(f"fusile: cannot use the kernel cache in {config.get('cache_dir')} "
                      f"({exc}); {where} (set FUSILE_CACHE_DIR to a writable directory)",
                      RuntimeWarning, stacklevel=4)
    return _fallback_dir[0]


def _in_memory(path: Path, text: str) -> ModuleType:
    """No writable directory at all: run the module from memory. Triton reads a kernel's
    source through linecache, so the text is registered there under the module's name."""
    import linecache
    import types

    name = str(path)
    linecache.cache[name] = (len(text), None, text.splitlines(True), name)
    module = types.ModuleType(path.stem)
    module.__file__ = name
    exec(compile(text, name, "exec"), module.__dict__)
    _loaded[name] = module
    return module
