"""Single flight: concurrent requests missing the same pair share one upstream call.

A request claims the pairs nobody is scoring yet and waits for the others. The owner settles
its claim once, with scores or with None; a waiter whose owner failed, was cancelled, or was
answered by another model scores the pair itself, so one request's failure never becomes another's.
One future per claiming request, not per pair: most requests share nothing, and pay little.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Scored:
    """What an owner publishes: scores of its own claimed pairs, in claim order."""

    scores: Sequence[float]
    provider: str


Flight = asyncio.Future  # of Scored | None


@dataclass(slots=True)
class Claim:
    own: list[int] = field(default_factory=list)  # positions this request scores itself
    waits: list[tuple[int, Flight, int]] = field(default_factory=list)  # (position, flight, index in it)
    keys: list[Hashable] = field(default_factory=list)  # the keys of `own`
    flight: Flight | None = None


class Flights:
    def __init__(self) -> None:
        self._pending: dict[Hashable, tuple[Flight, int]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def claim(self, keys: Sequence[Hashable]) -> Claim:
        claim = Claim()
        pending = self._pending
        for position, key in enumerate(keys):
            entry = pending.get(key)
            if entry is not None:
                claim.waits.append((position, *entry))
                continue
            if claim.flight is None:
                claim.flight = asyncio.get_running_loop().create_future()
            pending[key] = (claim.flight, len(claim.own))
            claim.own.append(position)
            claim.keys.append(key)
        return claim

    def settle(self, claim: Claim, scored: Scored | None) -> None:
        """Publish the owner's scores (None: it has none to share) and forget its claims."""
        if claim.flight is None or claim.flight.done():
            return
        for key in claim.keys:
            self._pending.pop(key, None)
        claim.flight.set_result(scored)


async def wait_shared(flight: Flight, index: int) -> tuple[float, str] | None:
    """(score, provider) from another request's call, or None: score it yourself."""
    # shield: a waiter giving up must not cancel the future other waiters rely on.
    scored = await asyncio.shield(flight)
    if scored is None:
        return None
    return scored.scores[index], scored.provider
