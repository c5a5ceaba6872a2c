"""rerank(request) -> result: model resolution, score cache, single flight, router, merge.

No HTTP in here: the handler hands in a RerankRequest and encodes the RerankResult.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.cache import CachePolicy, ScoreCache
from gateway.config import GatewayConfig
from gateway.errors import AllProvidersFailed, InvalidRequest, UnknownModel
from gateway.flights import Flights, wait_shared
from gateway.models import RerankRequest, RerankResult, ScoredPairs
from gateway.router import Router


class RerankService:
    def __init__(self, config: GatewayConfig, router: Router, cache: ScoreCache) -> None:
        self._config = config
        self._router = router
        self._cache = cache
        self._flights = Flights()
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

    async def rerank(self, request: RerankRequest, policy: CachePolicy = CachePolicy()) -> RerankResult:
        started = time.perf_counter()
        job = _Job(self.resolve_model(request.model), request.instruction, _UniquePairs(request.queries, request.documents), policy)
        if policy.read:
            job.scores = await self._cache.get_many(job.model, job.instruction, job.pairs.queries, job.pairs.documents)
        else:
            job.scores = [None] * len(job.pairs.documents)
        missing = [slot for slot, score in enumerate(job.scores) if score is None]
        if missing:
            await self._fill(job, missing)
        result = job.result
        result.scores = job.pairs.spread(job.scores)
        result.cache_misses = len(job.sent)
        result.cache_hits = len(job.scores) - len(job.sent)
        result.runtime_ms = (time.perf_counter() - started) * 1000
        return result

    async def _fill(self, job: _Job, missing: list[int]) -> None:
        """Score the missing slots: pairs nobody is scoring ourselves, the rest shared."""
        if not job.policy.read:
            await self._score_slots(job, missing)
            return
        keys = [(job.model, job.instruction, job.pairs.queries[s], job.pairs.documents[s]) for s in missing]
        own, waits = self._flights.claim(keys)
        claimed = [keys[i] for i in own]
        published = False
        try:
            if own:
                scored = await self._score_slots(job, [missing[i] for i in own])
                if scored.model == job.model:
                    self._flights.settle(claimed, scored.scores, scored.provider)
                    published = True
                else:
                    return  # another model scored every slot; shared scores would mix models
        finally:
            if not published:
                self._flights.settle(claimed, None)
        orphaned = []
        for index, future in waits:
            shared = await wait_shared(future)
            if shared is None:
                orphaned.append(missing[index])
            else:
                job.scores[missing[index]] = shared.score
                if not own:
                    job.result.provider = shared.provider
        if orphaned:
            await self._score_slots(job, orphaned)

    async def _score_slots(self, job: _Job, slots: list[int]) -> ScoredPairs:
        """One upstream round for these slots; cached when scored by the requested model."""
        queries, documents = job.pairs.select(slots)
        try:
            scored = await self._router.score(job.model, queries, documents, job.instruction)
        except AllProvidersFailed as failed:
            if not self._router.has_fallback_models(job.model):
                raise
            # Another model's scores are not comparable with this model's, cached or fresh, so
            # the fallback model scores every pair of the request.
            slots = list(range(len(job.pairs.documents)))
            queries, documents = list(job.pairs.queries), list(job.pairs.documents)
            scored = await self._router.score_by_fallback_models(job.model, queries, documents, job.instruction, failed)
        for slot, score in zip(slots, scored.scores):
            job.scores[slot] = score
        job.sent.update(slots)
        job.result.model, job.result.provider = scored.model, scored.provider
        job.result.usage.add(scored.usage)
        if job.policy.write and scored.model == job.model:
            await self._cache.put_many(job.model, job.instruction, queries, documents, scored.scores)
        return scored


@dataclass(slots=True)
class _Job:
    """One request on its way through the service."""

    model: str
    instruction: str | None
    pairs: _UniquePairs
    policy: CachePolicy
    scores: list[float | None] = field(default_factory=list)  # per unique slot
    sent: set[int] = field(default_factory=set)  # slots this request sent upstream
    result: RerankResult = field(init=False)

    def __post_init__(self) -> None:
        self.result = RerankResult(scores=[], model=self.model, provider="cache")


class _UniquePairs:
    """The distinct (query, document) pairs of a request: a repeated passage is scored once."""

    def __init__(self, queries: Sequence[str], documents: Sequence[str]) -> None:
        slot_of: dict[tuple[str, str], int] = {}
        self.slots = [slot_of.setdefault(pair, len(slot_of)) for pair in zip(queries, documents)]
        self.queries: Sequence[str] = queries
        self.documents: Sequence[str] = documents
        if len(slot_of) < len(documents):
            self.queries = [pair[0] for pair in slot_of]
            self.documents = [pair[1] for pair in slot_of]

    def select(self, slots: Sequence[int]) -> tuple[list[str], list[str]]:
        return [self.queries[s] for s in slots], [self.documents[s] for s in slots]

    def spread(self, slot_scores: Sequence[float | None]) -> list[float]:
        """Scores back at every request position, repeats included."""
        return [slot_scores[slot] for slot in self.slots]  # type: ignore[misc]  # all filled by now


def _model_names(config: GatewayConfig) -> dict[str, str]:
    names = {name: name for name in config.models}
    for name, model in config.models.items():
        names.update(dict.fromkeys(model.aliases, name))
    return names
