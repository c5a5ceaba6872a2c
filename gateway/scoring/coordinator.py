"""Single flight for one request's missing pairs, at both levels (see gateway.scoring.flights).

    in process    pairs another request of this process is scoring are waited for (Flights);
                  the pairs this request claims are scored once, and the waiters get them
    across        pairs another process leased (the cache's lookup says which) are waited for
                  in the cache while this request scores its own; its own leases are renewed
                  while its call runs and released when it will not store them

A waiter whose owner failed, was cancelled, or was answered by another model scores the pair
itself; when the router scored the whole request anew (another model or group, or lexically),
no slot takes a score from anyone else. Scoring is the service's (`score_slots`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence

from gateway.cache import ScoreCache
from gateway.models import ScoredPairs
from gateway.scoring.flights import Flights, Scored, await_elsewhere, wait_shared
from gateway.scoring.job import Job, at_slots

ScoreSlots = Callable[[Job, Sequence[int]], Awaitable[ScoredPairs]]


class FlightCoordinator:
    def __init__(self, cache: ScoreCache, flights: Flights, score_slots: ScoreSlots) -> None:
        self._cache = cache
        self._flights = flights
        self._score_slots = score_slots

    async def fill(self, job: Job, missing: Sequence[int]) -> None:
        """Score the missing slots: pairs nobody is scoring ourselves, the rest shared."""
        if not job.policy.read:
            await self._score_slots(job, missing)
            return
        keys = at_slots(job.keys, missing)
        claim = self._flights.claim(keys)
        shared: Scored | None = None
        try:
            if claim.own:
                # claim.own holds positions of `missing`, distinct and in order: as many is all of them.
                own = missing if len(claim.own) == len(missing) else [missing[i] for i in claim.own]
                shared = await self._fill_own(job, own)
                if shared is None:
                    return  # every slot was scored anew (another model, or lexically): nothing to share or wait for
        finally:
            self._flights.settle(claim, shared)
        orphaned = []
        for position, flight, index in claim.waits:
            waited = time.perf_counter()
            found = await wait_shared(flight, index)
            job.result.upstream_ms += (time.perf_counter() - waited) * 1000
            if found is None:
                orphaned.append(missing[position])
                continue
            job.scores[missing[position]] = found[0]
            if not claim.own:
                job.result.provider = found[1]
        if orphaned:
            await self._score_slots(job, orphaned)

    async def _fill_own(self, job: Job, own: Sequence[int]) -> Scored | None:
        """Score the slots this process leased while waiting for those another process is scoring.

        None when another model scored every slot instead.
        """
        theirs: list[int]
        ours: Sequence[int]
        if job.elsewhere:
            theirs = [slot for slot in own if slot in job.elsewhere]
            ours = [slot for slot in own if slot not in job.elsewhere]
        else:  # no other process is scoring any of them (always so without Redis)
            theirs, ours = [], own
        waiting = asyncio.ensure_future(self._wait_elsewhere(job, theirs)) if theirs else None
        provider = job.result.provider
        try:
            if ours:
                provider = (await self._score_leased(job, ours)).provider
            if waiting is not None and not job.rescored_whole:
                waited = time.perf_counter()
                found = await waiting
                job.result.upstream_ms += (time.perf_counter() - waited) * 1000
                # Set only now, when this request's own scores are known to be the requested model's.
                for slot, score in zip(theirs, found):
                    job.scores[slot] = score
                left = [slot for slot, score in zip(theirs, found) if score is None]
                if left:  # the other process's lease ended without a score, or time ran short
                    provider = (await self._score_leased(job, left)).provider
        finally:
            if waiting is not None:
                waiting.cancel()
        if job.rescored_whole:
            return None
        return Scored(job.filled(own), provider)

    async def _wait_elsewhere(self, job: Job, slots: Sequence[int]) -> list[float | None]:
        # Half the time left stays for scoring them here if the other process does not deliver.
        until = math.inf if job.deadline is None else (asyncio.get_running_loop().time() + job.deadline) / 2
        return await await_elsewhere(self._cache, [job.keys[slot] for slot in slots], until, job.deadline)

    async def _score_leased(self, job: Job, slots: Sequence[int]) -> ScoredPairs:
        """_score_slots for leased slots. The leases are renewed while the call runs, so a process
        waiting for these pairs keeps waiting rather than paying for them too; a lease that no stored
        score ends is released at once, so it scores them itself without waiting for it to run out."""
        keys = at_slots(job.keys, slots)
        leases = self._cache.keep_leases(keys, job.deadline)  # for a call slower than a lease
        try:
            scored = await self._score_slots(job, slots)
        except BaseException:
            await self._cache.release(keys)
            raise
        finally:
            leases.stop()
        if scored.whole:
            await self._cache.release(keys)
        return scored
