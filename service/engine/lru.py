"""A least-recently-used map bounded by the bytes of its values rather than their count."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ByteBudgetLru(Generic[K, V]):
    """Holds entries while their total size fits ``budget``; inserting evicts the least recently used.

    An entry larger than the whole budget is still kept (alone) until the next insertion, so the
    request that loaded it is not penalised; a budget of 0 disables caching.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        """The value, marked as most recently used, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def peek(self, key: K) -> V | None:
        """The value without changing the order, or None."""
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def put(self, key: K, value: V, nbytes: int) -> None:
        if self.budget <= 0:
            return
        self.pop(key)
        self._entries[key] = (value, nbytes)
        self._bytes += nbytes
        while self._bytes > self.budget and len(self._entries) > 1:
            _, (_, old_bytes) = self._entries.popitem(last=False)
            self._bytes -= old_bytes

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self._bytes -= entry[1]
        return entry[0]
