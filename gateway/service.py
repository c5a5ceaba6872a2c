"""rerank(request) -> result: model resolution, score cache, single flight, router, merge.

No HTTP in here: the handler hands in a RerankRequest and encodes the RerankResult. Who scores
the missing pairs, and what happens when providers fail, is the router's one plan.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.cache import CachePolicy, PairKey, ScoreCache, pair_keys
from gateway.config import GatewayConfig
from gateway.errors import InvalidRequest, UnknownModel
from gateway.flights import Flights, Scored, wait_shared
from gateway.models import Batch, RerankRequest, RerankResult, ScoredPairs, ScoreRequest
from gateway.router import Router


class RerankService:
    def __init__(self, config: GatewayConfig, router: Router, cache: ScoreCache, flights: Flights) -> None:
        self._config = config
        self._router = router
        self._cache = cache
        self._flights = flights
        self._model_by_name = _model_names(config)

    def resolve_model(self, requested: str | None) -> str:
        if requested is None:
            default = self._config.server.default_model
            if default is None:
                raise InvalidRequest("model: required (this gateway has no server.default_model)")
            return default
        model = self._model_by_name.get(requested)
        if model is None:
            raise UnknownModel(f"model {requested!r} is not served here; models: {', '.join(self.model_names())}")
        return model

    def model_names(self) -> list[str]:
        return sorted(self._config.models)

    async def rerank(
        self, request: RerankRequest, policy: CachePolicy = CachePolicy(), deadline: float | None = None
    ) -> RerankResult:
        """Scores for every document in request order; `deadline` is in event-loop time."""
        started = time.perf_counter()
        model = self.resolve_model(request.model)
        pairs = _UniquePairs(request.queries, request.documents, request.instruction)
        keys = pair_keys(model, request.instruction, pairs.queries, pairs.documents)
        job = _Job(model, pairs, policy, keys, deadline)
        job.scores = await self._cache.get_many(job.keys) if policy.read else [None] * len(job.keys)
        missing = [slot for slot, score in enumerate(job.scores) if score is None]
        if missing:
            await self._fill(job, missing)
        result = job.result
        result.scores = pairs.spread(job.scores)
        result.cache_misses = len(job.sent)
        result.cache_hits = len(job.scores) - len(job.sent)
        result.runtime_ms = (time.perf_counter() - started) * 1000
        return result

    async def _fill(self, job: _Job, missing: list[int]) -> None:
        """Score the missing slots: pairs nobody is scoring ourselves, the rest shared."""
        if not job.policy.read:
            await self._score_slots(job, missing)
            return
        claim = self._flights.claim([job.keys[slot] for slot in missing])
        shared: Scored | None = None
        try:
            if claim.own:
                scored = await self._score_slots(job, [missing[i] for i in claim.own])
                if scored.whole:
                    return  # every slot was scored anew (another model, or lexically): nothing to share or wait for
                shared = Scored(scored.scores, scored.provider)
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

    async def _score_slots(self, job: _Job, slots: list[int]) -> ScoredPairs:
        """One upstream round for these slots; cached when scored by the requested model itself."""
        started = time.perf_counter()
        try:
            scored = await self._router.score(ScoreRequest(job.model, job.pairs.select(slots), job.pairs.all, job.deadline))
        finally:
            job.result.upstream_ms += (time.perf_counter() - started) * 1000
        covered = range(len(job.keys)) if scored.whole else slots
        for slot, score in zip(covered, scored.scores):
            job.scores[slot] = score
        job.result.model, job.result.provider = scored.model, scored.provider
        job.result.usage.add(scored.usage)
        if scored.degraded:
            job.result.degraded = True
            job.sent.clear()  # nothing went upstream
            return scored
        job.sent.update(covered)
        if job.policy.write and scored.model == job.model:
            await self._cache.put_many([job.keys[slot] for slot in covered], scored.scores)
        return scored


@dataclass(slots=True)
class _Job:
    """One request on its way through the service."""

    model: str
    pairs: _UniquePairs
    policy: CachePolicy
    keys: list[PairKey]  # per unique slot
    deadline: float | None
    scores: list[float | None] = field(default_factory=list)  # per unique slot
    sent: set[int] = field(default_factory=set)  # slots this request sent upstream
    result: RerankResult = field(init=False)

    def __post_init__(self) -> None:
        self.result = RerankResult(scores=[], model=self.model, provider="cache")


class _UniquePairs:
    """The distinct (query, document) pairs of a request: a repeated passage is scored once."""

    def __init__(self, queries: Sequence[str], documents: Sequence[str], instruction: str | None) -> None:
        slot_of: dict[tuple[str, str], int] = {}
        self.slots = [slot_of.setdefault(pair, len(slot_of)) for pair in zip(queries, documents)]
        self.queries: Sequence[str] = queries
        self.documents: Sequence[str] = documents
        if len(slot_of) < len(documents):
            self.queries = [pair[0] for pair in slot_of]
            self.documents = [pair[1] for pair in slot_of]
        self.all = Batch(self.queries, self.documents, instruction)

    def select(self, slots: Sequence[int]) -> Batch:
        if list(slots) == list(range(len(self.documents))):
            return self.all  # every slot, in order: the usual miss, without copying
        return Batch([self.queries[s] for s in slots], [self.documents[s] for s in slots], self.all.instruction)

    def spread(self, slot_scores: Sequence[float | None]) -> list[float]:
        """Scores back at every request position, repeats included."""
        return [slot_scores[slot] for slot in self.slots]  # type: ignore[misc]  # all filled by now


def _model_names(config: GatewayConfig) -> dict[str, str]:
    names = {name: name for name in config.models}
    for name, model in config.models.items():
        names.update(dict.fromkeys(model.aliases, name))
    return names
