"""Single flight: concurrent requests missing the same pair share one upstream call.

A request claims the pairs nobody is scoring yet and waits for the others. The owner settles
its claim once, with scores or with None; a waiter whose owner failed, was cancelled, or was
answered by another model scores the pair itself, so one request's failure never becomes another's.
One future per claiming request, not per pair: most requests share nothing, and pay little.

Across processes (workers, replicas) the cache's leases do the same: the owner of a claim in
this process that finds a pair leased to another process waits for that one's score
(`await_elsewhere`), and requests of this process waiting on it never touch Redis.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from gateway.cache.base import PairKey, ScoreCache
from gateway.records import record

# Polling the score keys, not pub/sub: no subscriber connection per process (per node in a
# Cluster), and a poll is the same one-call read that also takes a lease over once it ends.
POLL_FIRST_SECONDS = 0.01
POLL_MAX_SECONDS = 0.05


@record
class Scored:
    """What an owner publishes: scores of its own claimed pairs, in claim order."""

    scores: Sequence[float]
    provider: str


Flight = asyncio.Future[Scored | None]


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
        """Own the keys nobody is scoring, wait for the others; `keys` are distinct (a request's distinct pairs)."""
        pending = self._pending
        if pending.keys().isdisjoint(keys):  # the usual miss shares nothing: claimed whole, in C
            flight: Flight = asyncio.get_running_loop().create_future()
            pending.update(zip(keys, zip(itertools.repeat(flight), range(len(keys)))))
            return Claim(own=list(range(len(keys))), keys=list(keys), flight=flight)
        claim = Claim()
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


async def await_elsewhere(
    cache: ScoreCache, keys: Sequence[PairKey], until: float, deadline: float | None
) -> list[float | None]:
    """Scores of keys another process is scoring, polled from the cache until `until` (loop time).

    A key comes back None when the poll leased it to this process (its owner failed and released
    it, or died and its lease ran out), or when it was still leased elsewhere at `until`:
    either way, score it yourself.
    """
    loop = asyncio.get_running_loop()
    scores: list[float | None] = [None] * len(keys)
    waiting = list(range(len(keys)))
    pause = POLL_FIRST_SECONDS
    while waiting and loop.time() + pause < until:
        await asyncio.sleep(pause)
        found = await cache.lookup([keys[i] for i in waiting], deadline)
        still = []
        for j, i in enumerate(waiting):
            scores[i] = found.scores[j]
            if scores[i] is None and j in found.elsewhere:
                still.append(i)
        waiting = still
        pause = min(2 * pause, POLL_MAX_SECONDS)
    return scores
