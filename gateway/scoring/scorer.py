"""One upstream round for some of a request's slots: the router's answer, cached, returned as a Round.

The scores a round caches are those of the requested model itself: in the group of the provider
that scored them (a provider of another group scores the whole request, and its scores go to its
own group). What the router's failed steps answered and paid for (kept.py) is counted in the
round's usage and cached the same way, whether or not the round itself answered.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.cache import PairKey, ScoreCache, pair_keys
from gateway.models import KeptScores, ScoredPairs, ScoreRequest, Usage
from gateway.records import record
from gateway.scoring.job import Job, at_slots
from gateway.scoring.router import Router


@record
class Round:
    """What one round scored: `scores` of `slots` (every slot when the round rescored the whole request)."""

    slots: Sequence[int]
    scored: ScoredPairs
    usage: Usage  # the answer's, and that of the calls its failed steps paid for
    upstream_ms: float
    stored: bool = False  # the requested slots' scores are in the cache under their keys (leases ended)

    @property
    def whole(self) -> bool:
        return self.scored.whole


class Scorer:
    def __init__(self, router: Router, cache: ScoreCache) -> None:
        self._router = router
        self._cache = cache

    async def score(self, job: Job, slots: Sequence[int]) -> Round:
        """The router's scores of these slots (or of every slot: see Round), cached when they are the model's own."""
        started = time.perf_counter()
        kept: list[KeptScores] = []
        usage = Usage()
        try:
            scored = await self._router.score(
                ScoreRequest(job.model, job.pairs.select(slots), job.pairs.all, job.group, job.deadline, job.language,
                             job.budgets),
                kept,
            )
        finally:
            upstream_ms = (time.perf_counter() - started) * 1000
            if kept:
                await self._keep(job, kept, usage)
        covered = range(len(job.keys)) if scored.whole else slots
        usage.add(scored.usage)
        stored = False
        if not scored.degraded and job.policy.write and scored.model == job.model:
            stored = await self._cache.put_many(self._keys_in(scored.group, job, covered), scored.scores)
            stored = stored and scored.group == job.group  # another group's keys end no lease of these
        return Round(covered, scored, usage, upstream_ms, stored)

    async def _keep(self, job: Job, kept: list[KeptScores], usage: Usage) -> None:
        """Calls that answered for a step that gave no answer (part of a split call, a lost hedge):
        paid for, so counted in `usage` and cached in their provider's group."""
        keys: list[PairKey] = []
        scores: list[float] = []
        for entry in kept:
            usage.add(entry.usage())
            if not (job.policy.write and entry.model == job.model):
                continue  # another model's scores are not cached under this one
            for call in entry.calls:  # by slot, as every layer names the request's pairs
                keys += self._keys_in(entry.group, job, call.slots)
                scores += entry.scores_of(call)
        if keys:
            await self._cache.put_many(keys, scores)

    @staticmethod
    def _keys_in(group: str, job: Job, slots: Sequence[int]) -> list[PairKey]:
        """The request's keys for these slots, in another cache group when a provider of another group scored them."""
        if group == job.group:
            return at_slots(job.keys, slots)
        pairs = job.pairs.select(slots)
        return pair_keys(group, pairs.instruction, pairs.queries, pairs.documents, at_slots(job.pairs.digests, slots))
