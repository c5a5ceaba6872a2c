"""rerank(request) -> result: model resolution, score cache, single flight, merge.

One request flows one way, each stage returning what the next needs:

    shaping       long documents held to the model's limit: cut, or split into windows that are
                  pairs of their own (gateway.scoring.shaping); merged back at the end, best window
    service       the model, the cache group (the router's plan table), the distinct pairs and
                  their keys (a Job), one cache lookup
    coordinator   the missing slots: shared with concurrent requests and other processes, the
                  rest scored in rounds (gateway.scoring.coordinator); returns a Filling
    scorer        one round: the router's answer, cached (gateway.scoring.scorer)
    service       the cached scores and the Filling merged, spread back to request positions

No HTTP in here: the handler hands in a RerankRequest and encodes the RerankResult.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.cache import CachePolicy, ScoreCache, list_digests, pair_keys, passage_digests
from gateway.config import GatewayConfig, ModelConfig, ModelNames
from gateway.errors import InvalidRequest, PayloadTooLarge, UnknownModel
from gateway.models import Limit, RerankRequest, RerankResult
from gateway.scoring.coordinator import Filling, FlightCoordinator
from gateway.scoring.flights import Flights
from gateway.scoring.job import Job, UniquePairs
from gateway.scoring.router import Router
from gateway.scoring.scorer import Scorer
from gateway.scoring.shaping import shape_documents


class RerankService:
    def __init__(self, config: GatewayConfig, router: Router, cache: ScoreCache, flights: Flights) -> None:
        self._config = config
        self._router = router
        self._cache = cache
        self._coordinator = FlightCoordinator(cache, flights, Scorer(router, cache))
        self._model_names = ModelNames(config)

    def resolve_model(self, requested: str | None) -> str:
        if requested is None:
            default = self._config.server.default_model
            if default is None:
                raise InvalidRequest("model: required (this gateway has no server.default_model)")
            return default
        model = self._model_names.canonical(requested)
        if model is None:
            # Client libraries send their own default name (Haystack's rerank-v3.5, LlamaIndex's
            # rerank-english-v3.0): say how to serve it, not only that it is not.
            raise UnknownModel(
                f"model {requested!r} is not served here; models: {', '.join(self.model_names())}. To serve "
                f"{requested!r}, add it to a model's `aliases` in the gateway's config (or \"*\" to take any name)"
            )
        return model

    def model_names(self) -> list[str]:
        return sorted(self._config.models)

    async def rerank(
        self, request: RerankRequest, policy: CachePolicy = CachePolicy(), deadline: float | None = None,
        model: str | None = None, budgets: tuple[Limit, ...] = (),
    ) -> RerankResult:
        """Scores for every document in request order; `deadline` is in event-loop time.

        `model`: the canonical model, when the caller resolved it already (the handler does, for its
        log line); else resolved here from the request. `budgets`: the client's and its team's, reserved
        with each provider's before every upstream call.
        """
        started = time.perf_counter()
        model = self.resolve_model(request.model) if model is None else model
        settings = self._config.models[model]
        shaped = shape_documents(request, model, settings)
        request = shaped.request
        pairs = _distinct_pairs(request, model, settings)
        language = self._router.language_of(model, pairs.queries)
        group, sibling = self._router.cache_group(model, request.instruction, language)
        keys = pair_keys(group, request.instruction, pairs.queries, pairs.documents, pairs.digests)
        job = Job(model, group, pairs, policy, keys, deadline, language, budgets)
        scores: list[float | None]
        elsewhere: frozenset[int] = frozenset()
        if policy.read:
            found = await self._cache.lookup(keys, deadline)
            scores, elsewhere = found.scores, found.elsewhere
        else:
            scores = [None] * len(keys)
        missing = _missing(scores)
        if missing and sibling is not None:
            missing = await self._read_sibling(job, sibling, scores, missing)
        if missing and settings.listwise:
            missing, elsewhere = _whole_list(scores, missing, elsewhere)
        result = RerankResult(scores=[], model=model, provider="cache", language=language)
        sent: set[int] = set()
        if missing:
            sent = _merge(result, scores, pairs, await self._coordinator.fill(job, missing, elsewhere))
        else:
            result.cache_hits = len(scores)
        result.scores = pairs.spread(scores)
        result.runtime_ms = (time.perf_counter() - started) * 1000
        return shaped.merge(result, [slot in sent for slot in pairs.slots] if shaped.owners is not None else None)

    async def _read_sibling(self, job: Job, sibling: str, scores: list[float | None], missing: Sequence[int]) -> Sequence[int]:
        """The missing pairs' scores from the sibling group (written before the verdict, or after it
        by a worker that knew of it first), copied into the request's group; the slots still missing."""
        pairs = job.pairs
        slots = list(missing)
        keys = pair_keys(sibling, pairs.all.instruction, [pairs.queries[s] for s in slots],
                         [pairs.documents[s] for s in slots], [pairs.digests[s] for s in slots])
        found = await self._cache.get_many(keys)
        hits = [(slot, score) for slot, score in zip(slots, found) if score is not None]
        if not hits:
            return missing
        for slot, score in hits:
            scores[slot] = score
        await self._cache.put_many([job.keys[slot] for slot, _ in hits], [score for _, score in hits])
        return _missing(scores)


def _merge(result: RerankResult, scores: list[float | None], pairs: UniquePairs, filling: Filling) -> set[int]:
    """What filling the missing slots found, into the cached scores and the result; the slots sent upstream."""
    for slot, score in filling.scores.items():
        scores[slot] = score
    raw: dict[int, float] = {}
    sent: set[int] = set()
    for round_ in filling.rounds:
        scored = round_.scored
        result.model = scored.model
        result.usage.add(round_.usage)
        result.upstream_ms += round_.upstream_ms
        if scored.raw_scores is not None:
            raw.update(zip(round_.slots, scored.raw_scores))
        elif raw:  # scored again, unmapped (a whole rescoring): nothing of theirs was mapped
            for slot in round_.slots:
                raw.pop(slot, None)
        if scored.degraded:
            result.degraded = True  # every slot scored lexically: none came from the cache
        else:
            sent.update(round_.slots)
    result.upstream_ms += filling.waited_ms
    if filling.provider is not None:
        result.provider = filling.provider
    if raw:
        result.raw_scores = [raw.get(slot) for slot in pairs.slots]
    result.cache_misses = len(scores) if result.degraded else len(sent)
    result.cache_hits = len(scores) - result.cache_misses
    return sent


def _distinct_pairs(request: RerankRequest, model: str, settings: ModelConfig) -> UniquePairs:
    """The request's distinct pairs; a list-wise model's are its positions in the one list it is."""
    if not settings.listwise:
        return UniquePairs(request.queries, request.documents, request.instruction, passage_digests(request.documents))
    if request.queries.count(request.queries[0]) != len(request.queries):
        raise InvalidRequest(f"queries: model {model!r} is list-wise (it ranks one query's documents together): "
                             "send one query per request")
    if len(request.documents) > settings.max_list_documents:
        raise PayloadTooLarge(f"documents: {len(request.documents)} documents exceed models.{model}.max_list_documents "
                              f"= {settings.max_list_documents}, what the list-wise model ranks in one call")
    return UniquePairs(request.queries, request.documents, request.instruction, list_digests(request.documents),
                       listwise=True)


def _whole_list(
    scores: list[float | None], missing: Sequence[int], elsewhere: frozenset[int],
) -> tuple[Sequence[int], frozenset[int]]:
    """A list-wise request's scores are one answer: part of it found (the rest evicted) is scored
    again whole, and another process's flight is waited for only when it holds the whole list."""
    if len(missing) != len(scores):
        missing = range(len(scores))
    return missing, elsewhere if len(elsewhere) == len(scores) else frozenset()


def _missing(scores: list[float | None]) -> Sequence[int]:
    """The slots without a score, in order; a range when it is every slot (see job.every_slot)."""
    if scores.count(None) == len(scores):
        return range(len(scores))  # nothing cached (the miss path): counted in C
    return [slot for slot, score in enumerate(scores) if score is None]
