"""Single flight for one request's missing pairs, at both levels (see gateway.scoring.flights).

    in process    pairs another request of this process is scoring are waited for (Flights);
                  the pairs this request claims are scored once, and the waiters get them
    across        pairs another process leased (the cache's lookup says which) are waited for
                  in the cache while this request scores its own; its own leases are renewed
                  while its call runs and released when it will not store them

A waiter whose owner failed, was cancelled, or was answered by another model scores the pair
itself; when the router scored the whole request anew (another model or group, or lexically),
no slot takes a score from anyone else. Scoring is the Scorer's, one stage down
(gateway.scoring.scorer): the coordinator calls it, and returns what it found and what each
round scored as one Filling, which the service merges. Nothing of the request is written here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.cache import ScoreCache
from gateway.scoring.flights import Flights, Scored, await_elsewhere, wait_shared
from gateway.scoring.job import Job, at_slots
from gateway.scoring.scorer import Round, Scorer


@dataclass(slots=True)
class Filling:
    """What filling one request's missing slots found, in the order it found it; the coordinator's own
    until `fill` returns it."""

    scores: dict[int, float] = field(default_factory=dict)  # slot -> score, from a round or a waiter's owner
    rounds: list[Round] = field(default_factory=list)
    waited_ms: float = 0.0  # time spent waiting for another request's or process's call
    provider: str | None = None  # who scored the last of them; None: nobody upstream (all from the cache)

    @property
    def rescored_whole(self) -> bool:
        """A round scored every slot anew (another model, or lexically): no slot may then take a
        score from the cache, a waiter or another process."""
        return any(round_.whole for round_ in self.rounds)

    def add(self, round_: Round) -> Round:
        self.rounds.append(round_)
        self.scores.update(zip(round_.slots, round_.scored.scores))
        self.provider = round_.scored.provider
        return round_

    def filled(self, slots: Sequence[int]) -> list[float]:
        """The scores of these slots, every one of them known by now."""
        missing = [slot for slot in slots if slot not in self.scores]
        if missing:
            raise AssertionError(f"slots {missing} have no score yet")
        return [self.scores[slot] for slot in slots]


class FlightCoordinator:
    def __init__(self, cache: ScoreCache, flights: Flights, scorer: Scorer) -> None:
        self._cache = cache
        self._flights = flights
        self._scorer = scorer

    async def fill(self, job: Job, missing: Sequence[int], elsewhere: frozenset[int]) -> Filling:
        """Score the missing slots: pairs nobody is scoring ourselves, the rest shared. `elsewhere`:
        the slots another process leased (the cache's lookup said so)."""
        filling = Filling()
        if not job.policy.read:
            filling.add(await self._scorer.score(job, missing))
            return filling
        keys = at_slots(job.keys, missing)
        claim = self._flights.claim(keys)
        shared: Scored | None = None
        try:
            if claim.own:
                # claim.own holds positions of `missing`, distinct and in order: as many is all of them.
                own = missing if len(claim.own) == len(missing) else [missing[i] for i in claim.own]
                shared = await self._fill_own(job, own, elsewhere, filling)
                if shared is None:
                    return filling  # every slot was scored anew (another model, or lexically): nothing to share or wait for
        finally:
            self._flights.settle(claim, shared)
        orphaned = []
        for position, flight, index in claim.waits:
            waited = time.perf_counter()
            found = await wait_shared(flight, index)
            filling.waited_ms += (time.perf_counter() - waited) * 1000
            if found is None:
                orphaned.append(missing[position])
                continue
            filling.scores[missing[position]] = found[0]
            if not claim.own:
                filling.provider = found[1]
        if orphaned:
            filling.add(await self._scorer.score(job, orphaned))
        return filling

    async def _fill_own(self, job: Job, own: Sequence[int], elsewhere: frozenset[int], filling: Filling) -> Scored | None:
        """Score the slots this process leased while waiting for those another process is scoring.

        None when another model scored every slot instead.
        """
        theirs: list[int]
        ours: Sequence[int]
        if elsewhere:
            theirs = [slot for slot in own if slot in elsewhere]
            ours = [slot for slot in own if slot not in elsewhere]
        else:  # no other process is scoring any of them (always so without Redis)
            theirs, ours = [], own
        waiting = asyncio.ensure_future(self._wait_elsewhere(job, theirs)) if theirs else None
        provider = filling.provider or "cache"
        try:
            if ours:
                provider = filling.add(await self._score_leased(job, ours)).scored.provider
            if waiting is not None and not filling.rescored_whole:
                waited = time.perf_counter()
                found = await waiting
                filling.waited_ms += (time.perf_counter() - waited) * 1000
                # Taken only now, when this request's own scores are known to be the requested model's.
                filling.scores.update((slot, score) for slot, score in zip(theirs, found) if score is not None)
                left = [slot for slot, score in zip(theirs, found) if score is None]
                if left:  # the other process's lease ended without a score, or time ran short
                    provider = filling.add(await self._score_leased(job, left)).scored.provider
        finally:
            if waiting is not None:
                waiting.cancel()
        if filling.rescored_whole:
            return None
        return Scored(filling.filled(own), provider)

    async def _wait_elsewhere(self, job: Job, slots: Sequence[int]) -> list[float | None]:
        # Half the time left stays for scoring them here if the other process does not deliver.
        until = math.inf if job.deadline is None else (asyncio.get_running_loop().time() + job.deadline) / 2
        return await await_elsewhere(self._cache, [job.keys[slot] for slot in slots], until, job.deadline)

    async def _score_leased(self, job: Job, slots: Sequence[int]) -> Round:
        """A round for leased slots. The leases are renewed while the call runs, so a process
        waiting for these pairs keeps waiting rather than paying for them too; a lease that no stored
        score ends (the call failed, its write was skipped or failed) is released at once, so that
        process scores them itself without waiting for the lease to run out."""
        keys = at_slots(job.keys, slots)
        leases = self._cache.keep_leases(keys, job.deadline)  # for a call slower than a lease
        try:
            round_ = await self._scorer.score(job, slots)
        except BaseException:
            await self._cache.release(keys)
            raise
        finally:
            leases.stop()
        if not round_.stored and job.policy.read:  # a request that reads nothing leases nothing
            await self._cache.release(keys)
        return round_
