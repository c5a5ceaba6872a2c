"""The in-process score cache: an LRU bounded by entry count, with a TTL."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from gateway.cache.base import LeaseKeeper, Lookup, PairKey


class _NoLeases:
    def stop(self) -> None:
        """Nothing was kept."""


_NO_LEASES = _NoLeases()


class MemoryScoreCache:
    def __init__(self, max_entries: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[PairKey, tuple[float, float]] = OrderedDict()
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    async def start(self) -> None:
        """Nothing to open: the in-process cache is ready when built."""

    async def get_many(self, keys: Sequence[PairKey]) -> list[float | None]:
        now = self._clock()
        found: list[float | None] = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is None or entry[1] <= now:
                found.append(None)
                continue
            self._entries.move_to_end(key)
            found.append(entry[0])
        return found

    async def lookup(self, keys: Sequence[PairKey], deadline: float | None = None) -> Lookup:
        # Nobody else reads this cache: every claim is granted, and flights.py shares the calls.
        return Lookup(await self.get_many(keys))

    async def release(self, keys: Sequence[PairKey]) -> None:
        """No leases to end."""

    def keep_leases(self, keys: Sequence[PairKey], deadline: float | None) -> LeaseKeeper:
        return _NO_LEASES  # no leases to keep

    async def put_many(self, keys: Sequence[PairKey], scores: Sequence[float]) -> None:
        expires = self._clock() + self._ttl
        for key, score in zip(keys, scores):
            self._entries[key] = (score, expires)
            self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def ping(self) -> bool:
        return True  # in this process: there whenever the gateway is

    async def close(self) -> None:
        self._entries.clear()
