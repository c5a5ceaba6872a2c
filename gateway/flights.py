"""Single flight: concurrent requests missing the same pair share one upstream call.

A request claims the pairs nobody is scoring yet and waits for the others. The owner settles
every claim it made, with a score or a failure; a waiter whose owner failed scores the pair
itself, so one request's failure (or cancellation) never becomes another's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Shared:
    """A score from another request's upstream call, and who produced it."""

    score: float
    provider: str


class Flights:
    def __init__(self) -> None:
        # A future's result is None when its owner produced no score this model may use.
        self._pending: dict[Hashable, asyncio.Future[Shared | None]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def claim(self, keys: Sequence[Hashable]) -> tuple[list[int], list[tuple[int, asyncio.Future[Shared | None]]]]:
        """Positions this request must score itself, and (position, future) pairs to wait on."""
        own: list[int] = []
        waits: list[tuple[int, asyncio.Future[Shared | None]]] = []
        loop = asyncio.get_running_loop()
        for position, key in enumerate(keys):
            future = self._pending.get(key)
            if future is None:
                self._pending[key] = loop.create_future()
                own.append(position)
            else:
                waits.append((position, future))
        return own, waits

    def settle(self, keys: Sequence[Hashable], scores: Sequence[float] | None, provider: str = "") -> None:
        """Publish the owner's scores (None: it failed) and forget the claims."""
        for index, key in enumerate(keys):
            future = self._pending.pop(key, None)
            if future is None or future.done():
                continue
            future.set_result(None if scores is None else Shared(scores[index], provider))


async def wait_shared(future: asyncio.Future[Shared | None]) -> Shared | None:
    """The shared score, or None when the owner failed and the waiter must score it itself."""
    # shield: a waiter giving up must not cancel the future other waiters rely on.
    return await asyncio.shield(future)
