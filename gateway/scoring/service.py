"""rerank(request) -> result: model resolution, score cache, router, merge.

Single flight (in process and across processes) is the FlightCoordinator's
(gateway.scoring.coordinator); a request's state is a Job (gateway.scoring.job).

No HTTP in here: the handler hands in a RerankRequest and encodes the RerankResult. Who scores
the missing pairs, and what happens when providers fail, is the router's one plan.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.cache import CachePolicy, PairKey, ScoreCache, pair_keys, passage_digests
from gateway.config import GatewayConfig, ModelNames
from gateway.errors import InvalidRequest, UnknownModel
from gateway.models import KeptScores, RerankRequest, RerankResult, ScoredPairs, ScoreRequest
from gateway.scoring.coordinator import FlightCoordinator
from gateway.scoring.flights import Flights
from gateway.scoring.job import Job, UniquePairs, at_slots, every_slot
from gateway.scoring.router import Router


class RerankService:
    def __init__(self, config: GatewayConfig, router: Router, cache: ScoreCache, flights: Flights) -> None:
        self._config = config
        self._router = router
        self._cache = cache
        self._coordinator = FlightCoordinator(cache, flights, self._score_slots)
        self._model_names = ModelNames(config)

    def resolve_model(self, requested: str | None) -> str:
        if requested is None:
            default = self._config.server.default_model
            if default is None:
                raise InvalidRequest("model: required (this gateway has no server.default_model)")
            return default
        model = self._model_names.canonical(requested)
        if model is None:
            raise UnknownModel(f"model {requested!r} is not served here; models: {', '.join(self.model_names())}")
        return model

    def model_names(self) -> list[str]:
        return sorted(self._config.models)

    async def rerank(
        self, request: RerankRequest, policy: CachePolicy = CachePolicy(), deadline: float | None = None,
        model: str | None = None,
    ) -> RerankResult:
        """Scores for every document in request order; `deadline` is in event-loop time.

        `model`: the canonical model, when the caller resolved it already (the handler does, for its
        log line); else resolved here from the request.
        """
        started = time.perf_counter()
        model = self.resolve_model(request.model) if model is None else model
        pairs = UniquePairs(request.queries, request.documents, request.instruction, passage_digests(request.documents))
        group = self._router.cache_group(model, request.instruction)
        keys = pair_keys(group, request.instruction, pairs.queries, pairs.documents, pairs.digests)
        job = Job(model, group, pairs, policy, keys, deadline)
        if policy.read:
            found = await self._cache.lookup(job.keys, deadline)
            job.scores, job.elsewhere = found.scores, found.elsewhere
        else:
            job.scores = [None] * len(job.keys)
        missing = _missing(job.scores)
        if missing:
            await self._coordinator.fill(job, missing)
        result = job.result
        result.scores = pairs.spread(job.scores)
        if job.raw:
            result.raw_scores = [job.raw.get(slot) for slot in pairs.slots]
        result.cache_misses = len(job.sent)
        result.cache_hits = len(job.scores) - len(job.sent)
        result.runtime_ms = (time.perf_counter() - started) * 1000
        return result

    async def _score_slots(self, job: Job, slots: Sequence[int]) -> ScoredPairs:
        """One upstream round for these slots; cached when scored by the requested model itself."""
        started = time.perf_counter()
        kept: list[KeptScores] = []
        try:
            scored = await self._router.score(
                ScoreRequest(job.model, job.pairs.select(slots), job.pairs.all, job.group, job.deadline), kept
            )
        finally:
            job.result.upstream_ms += (time.perf_counter() - started) * 1000
            if kept:
                await self._keep(job, kept)
        covered = range(len(job.keys)) if scored.whole else slots
        job.rescored_whole |= scored.whole
        if every_slot(covered, len(job.scores)) and len(scored.scores) == len(job.scores):  # the usual miss
            job.scores[:] = scored.scores
        else:
            for slot, score in zip(covered, scored.scores):
                job.scores[slot] = score
        job.note_raw(covered, scored.raw_scores)
        job.result.model, job.result.provider = scored.model, scored.provider
        job.result.usage.add(scored.usage)
        if scored.degraded:
            job.result.degraded = True
            job.sent.clear()  # nothing went upstream
            return scored
        job.sent.update(covered)
        if job.policy.write and scored.model == job.model:
            await self._cache.put_many(self._keys_in(scored.group, job, covered), scored.scores)
        return scored

    async def _keep(self, job: Job, kept: list[KeptScores]) -> None:
        """Calls that answered for a step that gave no answer (part of a split call, a lost hedge):
        paid for, so counted in the request's usage and cached in their provider's group."""
        keys: list[PairKey] = []
        scores: list[float] = []
        for entry in kept:
            job.result.usage.add(entry.usage())
            if not (job.policy.write and entry.model == job.model):
                continue  # another model's scores are not cached under this one
            for call in entry.calls:  # by slot, as every layer names the request's pairs
                keys += self._keys_in(entry.group, job, call.slots)
                scores += entry.scores_of(call)
        if keys:
            await self._cache.put_many(keys, scores)

    def _keys_in(self, group: str, job: Job, slots: Sequence[int]) -> list[PairKey]:
        """The request's keys for these slots, in another cache group when a provider of another group scored them."""
        if group == job.group:
            return at_slots(job.keys, slots)
        pairs = job.pairs.select(slots)
        return pair_keys(group, pairs.instruction, pairs.queries, pairs.documents, at_slots(job.pairs.digests, slots))


def _missing(scores: list[float | None]) -> Sequence[int]:
    """The slots without a score, in order; a range when it is every slot (see job.every_slot)."""
    if scores.count(None) == len(scores):
        return range(len(scores))  # nothing cached (the miss path): counted in C
    return [slot for slot, score in enumerate(scores) if score is None]
