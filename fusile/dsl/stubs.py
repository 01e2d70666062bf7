"""Python-visible names for the builtins, so `from fusile import rsqrt, mean` reads naturally.

Inside an @fused function these names are the DSL's builtins. Called from ordinary Python, they
explain themselves instead of computing something subtly different.
"""

from __future__ import annotations

from typing import Any

from fusile.dsl.builtins import BUILTINS, signature


class Builtin:
    def __init__(self, name: str, spelled: str | None = None, doc: str | None = None):
        self.__fusile_builtin__ = name
        self.__name__ = name
        self._signature = spelled or signature(name)
        self.__doc__ = f"{self._signature}: {doc or BUILTINS[name].doc} (a fusile DSL builtin)"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"fusile.{self.__name__} is a DSL builtin: call it inside an @fused "
                        "function")

    def __repr__(self) -> str:
        return f"<fusile builtin {self._signature}>"


STUBS = {name: Builtin(name) for name in BUILTINS}
STUBS["concat"] = Builtin("concat", "concat([a, b, ...], axis=0)",
                          "the pieces joined along axis (torch.cat); never built in memory")
STUBS["stack"] = Builtin("stack", "stack([a, b, ...], axis=0)",
                         "the pieces stacked along a new axis (torch.stack)")
