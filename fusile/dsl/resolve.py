"""Resolution of names a fused function reads from its Python globals (and closure)."""

from __future__ import annotations

from typing import Any

from fusile.dsl.types import ALIASES, DType


def resolve_global(dotted: str, globals_: dict[str, Any]) -> tuple[bool, Any]:
    """Look up `a.b.c` in a function's globals, then in builtins; (found, object)."""
    head, *rest = dotted.split(".")
    if head in globals_:
        obj = globals_[head]
    else:
        import builtins

        if not hasattr(builtins, head) or head in ("max", "min", "sum", "abs"):
            return False, None
        obj = getattr(builtins, head)
    for part in rest:
        if not hasattr(obj, part):
            return False, None
        obj = getattr(obj, part)
    return True, obj


def dtype_of(obj: Any) -> DType | None:
    """A fusile dtype from a name, a fusile DType, a torch.dtype or a numpy dtype."""
    if isinstance(obj, DType):
        return obj
    if isinstance(obj, str):
        return ALIASES.get(obj)
    text = str(obj)
    if text.startswith("torch."):
        return ALIASES.get(text.split(".", 1)[1])
    try:
        import numpy as np

        return ALIASES.get(np.dtype(obj).name)
    except TypeError:
        return None
