"""Requests in flight per client and team, in this process: the `concurrent` limits."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

from gateway.errors import RateLimited


class Cap(NamedTuple):
    key: str  # "client:kb-prod", "team:search"
    limit: int
    owner: str  # "client kb-prod": what a refusal names


class InFlight:
    """Counts live as long as the process, so a reload never forgets a request still running."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    @contextmanager
    def holding(self, caps: Sequence[Cap]) -> Iterator[None]:
        """One request in flight under every cap, or RateLimited when one is full."""
        if not caps:
            yield
            return
        counts = self._counts
        for cap in caps:
            if counts.get(cap.key, 0) >= cap.limit:
                raise RateLimited(f"{cap.owner} has {cap.limit} requests in flight already (its concurrent limit)")
        for cap in caps:
            counts[cap.key] = counts.get(cap.key, 0) + 1
        try:
            yield
        finally:
            for cap in caps:
                counts[cap.key] -= 1

    def count(self, key: str) -> int:
        return self._counts.get(key, 0)
