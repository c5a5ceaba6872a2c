"""rerank(request) -> result: model resolution, score cache, router, merge. No HTTP in here."""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.cache import CachePolicy, ScoreCache
from gateway.config import GatewayConfig
from gateway.errors import AllProvidersFailed, InvalidRequest, UnknownModel
from gateway.models import RerankRequest, RerankResult, ScoredPairs
from gateway.router import Router


class RerankService:
    def __init__(self, config: GatewayConfig, router: Router, cache: ScoreCache) -> None:
        self._config = config
        self._router = router
        self._cache = cache
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
        model = self.resolve_model(request.model)
        pairs = _UniquePairs(request.queries, request.documents)
        if policy.read:
            slot_scores = await self._cache.get_many(model, request.instruction, pairs.queries, pairs.documents)
        else:
            slot_scores = [None] * len(pairs.documents)
        missing = [slot for slot, score in enumerate(slot_scores) if score is None]
        result = RerankResult(scores=[], model=model, provider="cache", cache_hits=len(slot_scores) - len(missing))
        if missing:
            scored_slots, scored = await self._score(model, pairs, missing, request.instruction)
            for slot, score in zip(scored_slots, scored.scores):
                slot_scores[slot] = score
            result.model, result.provider, result.usage = scored.model, scored.provider, scored.usage
            result.cache_hits = len(slot_scores) - len(scored_slots)
            result.cache_misses = len(scored_slots)
            # Only this model's own scores are cached under its name.
            if policy.write and scored.model == model:
                queries, documents = pairs.select(scored_slots)
                await self._cache.put_many(model, request.instruction, queries, documents, scored.scores)
        result.scores = pairs.spread(slot_scores)
        result.runtime_ms = (time.perf_counter() - started) * 1000
        return result

    async def _score(
        self, model: str, pairs: _UniquePairs, missing: list[int], instruction: str | None
    ) -> tuple[Sequence[int], ScoredPairs]:
        """Scores for the missing slots, or for every slot when another model had to answer."""
        queries, documents = pairs.select(missing)
        try:
            return missing, await self._router.score(model, queries, documents, instruction)
        except AllProvidersFailed as failed:
            if not self._router.has_fallback_models(model):
                raise
            # Another model's scores are not comparable with this model's cached ones, so the
            # fallback model scores every pair of the request.
            every_slot = range(len(pairs.documents))
            scored = await self._router.score_by_fallback_models(
                model, pairs.queries, pairs.documents, instruction, failed
            )
            return every_slot, scored


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
