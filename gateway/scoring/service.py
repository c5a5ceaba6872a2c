"""rerank(request) -> result: model resolution, score cache, single flight, router, merge.

No HTTP in here: the handler hands in a RerankRequest and encodes the RerankResult. Who scores
the missing pairs, and what happens when providers fail, is the router's one plan.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.cache import CachePolicy, PairKey, ScoreCache, pair_keys
from gateway.config import CATCH_ALL_ALIAS, GatewayConfig
from gateway.errors import InvalidRequest, UnknownModel
from gateway.models import Batch, KeptScores, RerankRequest, RerankResult, ScoredPairs, ScoreRequest
from gateway.scoring.flights import Flights, Scored, await_elsewhere, wait_shared
from gateway.scoring.router import Router


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
        model = self._model_by_name.get(requested) or self._model_by_name.get(CATCH_ALL_ALIAS)
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
        group = self._router.cache_group(model, request.instruction)
        keys = pair_keys(group, request.instruction, pairs.queries, pairs.documents)
        job = _Job(model, group, pairs, policy, keys, deadline)
        if policy.read:
            found = await self._cache.lookup(job.keys, deadline)
            job.scores, job.elsewhere = found.scores, found.elsewhere
        else:
            job.scores = [None] * len(job.keys)
        missing = [slot for slot, score in enumerate(job.scores) if score is None]
        if missing:
            await self._fill(job, missing)
        result = job.result
        result.scores = pairs.spread(job.scores)
        if job.raw:
            result.raw_scores = [job.raw.get(slot) for slot in pairs.slots]
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
                shared = await self._fill_own(job, [missing[i] for i in claim.own])
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

    async def _fill_own(self, job: _Job, own: list[int]) -> Scored | None:
        """Score the slots this process leased while waiting for those another process is scoring.

        None when another model scored every slot instead.
        """
        theirs = [slot for slot in own if slot in job.elsewhere]
        ours = [slot for slot in own if slot not in job.elsewhere]
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
        return Scored([job.scores[slot] for slot in own], provider)  # type: ignore[misc]  # all filled

    async def _wait_elsewhere(self, job: _Job, slots: list[int]) -> list[float | None]:
        # Half the time left stays for scoring them here if the other process does not deliver.
        until = math.inf if job.deadline is None else (asyncio.get_running_loop().time() + job.deadline) / 2
        return await await_elsewhere(self._cache, [job.keys[slot] for slot in slots], until, job.deadline)

    async def _score_leased(self, job: _Job, slots: list[int]) -> ScoredPairs:
        """_score_slots for leased slots. The leases are renewed while the call runs, so a process
        waiting for these pairs keeps waiting rather than paying for them too; a lease that no stored
        score ends is released at once, so it scores them itself without waiting for it to run out."""
        keys = [job.keys[slot] for slot in slots]
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

    async def _score_slots(self, job: _Job, slots: list[int]) -> ScoredPairs:
        """One upstream round for these slots; cached when scored by the requested model itself."""
        started = time.perf_counter()
        kept: list[KeptScores] = []
        try:
            scored = await self._router.score(
                ScoreRequest(job.model, job.pairs.select(slots), job.pairs.all, job.group, job.deadline), kept
            )
        finally:
            job.result.upstream_ms += (time.perf_counter() - started) * 1000
            await self._keep(job, kept)
        covered = range(len(job.keys)) if scored.whole else slots
        job.rescored_whole |= scored.whole
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

    async def _keep(self, job: _Job, kept: list[KeptScores]) -> None:
        """Calls that answered for a step that gave no answer (part of a split call, a lost hedge):
        paid for, so counted in the request's usage and cached in their provider's group."""
        keys: list[PairKey] = []
        scores: list[float] = []
        for entry in kept:
            job.result.usage.add(entry.usage())
            if not (job.policy.write and entry.model == job.model):
                continue  # another model's scores are not cached under this one
            for call in entry.calls:
                pairs = entry.pairs.select(call.positions)
                keys += pair_keys(entry.group, pairs.instruction, pairs.queries, pairs.documents)
                scores += entry.scores_of(call)
        if keys:
            await self._cache.put_many(keys, scores)

    def _keys_in(self, group: str, job: _Job, slots: Sequence[int]) -> list[PairKey]:
        """The request's keys for these slots, in another cache group when a provider of another group scored them."""
        if group == job.group:
            return [job.keys[slot] for slot in slots]
        pairs = job.pairs.select(slots)
        return pair_keys(group, pairs.instruction, pairs.queries, pairs.documents)


@dataclass(slots=True)
class _Job:
    """One request on its way through the service."""

    model: str
    group: str  # the cache namespace the request's scores are read from
    pairs: _UniquePairs
    policy: CachePolicy
    keys: list[PairKey]  # per unique slot
    deadline: float | None
    elsewhere: frozenset[int] = frozenset()  # slots another process is scoring (its lease)
    scores: list[float | None] = field(default_factory=list)  # per unique slot
    sent: set[int] = field(default_factory=set)  # slots this request sent upstream
    # A step of the router's plan scored every slot anew (another model, or lexically): no slot
    # may then take a score from the cache, a waiter or another process.
    rescored_whole: bool = False
    raw: dict[int, float] = field(default_factory=dict)  # slot -> the provider's score, where mapped
    result: RerankResult = field(init=False)

    def __post_init__(self) -> None:
        self.result = RerankResult(scores=[], model=self.model, provider="cache")

    def note_raw(self, slots: Sequence[int], raw_scores: Sequence[float] | None) -> None:
        """Keep the provider's own scores of slots whose scores were mapped onto the group's scale."""
        if raw_scores is not None:
            self.raw.update(zip(slots, raw_scores))
        elif self.raw:  # scored again, unmapped (a whole rescoring): nothing of theirs was mapped
            for slot in slots:
                self.raw.pop(slot, None)


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
