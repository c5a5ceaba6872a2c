"""Requests in flight per client and team, in this process: the `concurrent` limits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from gateway.errors import ClientRateLimited


class Cap(NamedTuple):
    key: str  # "client:kb-prod", "team:search"
    limit: int
    owner: str  # "client kb-prod": what a refusal names


class InFlight:
    """Counts live as long as the process, so a reload never forgets a request still running."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def holding(self, caps: Sequence[Cap]) -> Held:
        """One request in flight under every cap (`with in_flight.holding(caps):`), or ClientRateLimited when one is full."""
        counts = self._counts
        for cap in caps:
            if counts.get(cap.key, 0) >= cap.limit:
                raise ClientRateLimited(f"{cap.owner} has {cap.limit} requests in flight already (its concurrent limit)")
        return Held(counts, caps)

    def count(self, key: str) -> int:
        return self._counts.get(key, 0)


class Held:
    """A request counted under its caps until the block ends: a plain class, cheaper than a generator's context."""

    __slots__ = ("_caps", "_counts")

    def __init__(self, counts: dict[str, int], caps: Sequence[Cap]) -> None:
        self._counts = counts
        self._caps = caps

    def __enter__(self) -> None:
        for cap in self._caps:
            self._counts[cap.key] = self._counts.get(cap.key, 0) + 1

    def __exit__(self, *_: object) -> None:
        for cap in self._caps:
            self._counts[cap.key] -= 1
