"""A bounded cache of a pure function, for the packet path's per-flow decisions."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any


class Memo(dict):
    """``memo[key]`` is ``fn(key)``, computed on first use. For pure per-packet decisions
    that depend on few distinct keys (addresses, rules): a hit is one dict lookup in C,
    where a Python-level call (a method, ``__contains__``) costs more than the rest of the
    check. Bounded: emptied when full, so spoofed addresses cannot grow it."""

    def __init__(self, fn: Callable[[Any], Any], limit: int = 1 << 16):
        super().__init__()
        self._fn = fn
        self._limit = limit

    def __missing__(self, key: Hashable) -> Any:
        if len(self) >= self._limit:
            self.clear()
        value = self[key] = self._fn(key)
        return value
