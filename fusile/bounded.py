"""The one eviction rule of fusile's in-memory caches on the call path (per-signature
programs, per-call dispatch entries, recorded launches, per-shape launch configs and compiled
kernel specializations): a dict that holds at most LIMIT entries and, when full, drops the
oldest quarter (insertion order). A workload that cycles through more shapes than the limit
keeps three quarters of its entries instead of losing them all at once, and reads cost what a
dict's do."""

from __future__ import annotations

import itertools
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

LIMIT = 512


class Bounded(dict[K, V]):
    __slots__ = ("limit",)

    def __init__(self, limit: int = LIMIT):
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> V:
        """Store `value` under `key` (evicting the oldest quarter first when full); returns it."""
        if key not in self and len(self) >= self.limit:
            for old in list(itertools.islice(self, max(1, self.limit // 4))):
                del self[old]
        self[key] = value
        return value
