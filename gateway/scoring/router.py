"""Who scores a request: one ordered plan per request, walked until a step answers.

    1. the model's own providers, in its fallback order         score the pairs the cache lacks
                                                                 (or all: see below)
    2. the providers of its `fallback_models`, in order          score every pair of the request
    3. the panic rule: nobody was called because every breaker   the provider whose breaker
       was open                                                  opened first, called anyway
    4. the lexical last resort, when configured                  BM25 of every pair, flagged

Another model's scores, or lexical ones, are never ranked beside the model's cached scores, so
steps 2 to 4 score the whole request (ScoreRequest.whole). Nor are the scores of a provider of the
same model that the quality guard has not found to agree with the provider whose scores the cache
held (another cache group): it too scores the whole request. One that shares the group only
through a map onto the reference's scale (gateway.quality.groups) has its answer mapped in
`_accept`, so everything after the router sees scores on the group's scale; the raw ones ride
along for the request log. A provider failing its canary is
planned after the model's other providers (`action = "skip"`), so it serves only when none of
them does, and skipped when it ranks like noise or no better than the lexical last resort
(QualityGuard.skip). A provider that cannot take the
request is noted as skipped; one that fails is noted with its reason, and the next step follows
unless the failure says the request itself is wrong. Every failure ends up in the one error the
client sees when the plan runs out.

Each provider attempt gets a slice of the request's remaining deadline
(gateway.resilience.deadline): a hanging provider costs its slice, and the next one answers in
the rest. With hedging on, a provider that has not answered within its delay gets company: the
same pairs go to the next step too (same model, same pairs), the first valid answer wins and
the other call is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.budget import utc_now
from gateway.config import GatewayConfig
from gateway.errors import AllProvidersFailed, ProviderFailure, UpstreamRejected
from gateway.models import Batch, KeptScores, ScoredPairs, ScoreRequest, Usage
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.trace import note_attempt
from gateway.providers.client import ProviderClient
from gateway.quality.calibration import Calibration
from gateway.quality.guard import QualityGuard
from gateway.resilience import CircuitBreaker, lexical_scores
from gateway.resilience.deadline import attempt_seconds
from gateway.resilience.guarded_call import GuardedCall
from gateway.resilience.health import HealthBoard
from gateway.scoring.kept import KeptAnswers, pairs_of

DEGRADED_LEXICAL = "degraded-lexical"

Attempt = asyncio.Task[tuple[list[float], Usage]]  # one provider call under way: its scores and usage


@dataclass(frozen=True, slots=True)
class Step:
    """One provider call the plan may make."""

    model: str  # the model whose scores this step gives
    client: ProviderClient
    group: str  # the cache namespace its scores belong to
    whole: bool  # scores every pair of the request, not only the missing ones
    panic: bool = False  # called although its breaker is open (the panic rule)
    scale: Calibration | None = None  # maps its scores onto its group's scale; None: taken as they are


class Router:
    def __init__(
        self,
        config: GatewayConfig,
        clients: Mapping[str, ProviderClient],
        guard: GuardedCall,
        health: HealthBoard,
        metrics: GatewayMetrics,
        quality: QualityGuard,
    ) -> None:
        self._config = config
        self._clients = clients
        self._guard = guard
        self._health = health
        self._metrics = metrics
        self._quality = quality
        self._groups = quality.groups

    def cache_group(self, model: str, instruction: str | None) -> str:
        """Where the request's cached scores are read: the group of the provider the plan would call first."""
        return self._groups.group_of(model, self.first_choice(model, instruction))

    def first_choice(self, model: str, instruction: str | None) -> str:
        """The provider of the model the plan would call first (else its reference, else its first)."""
        for provider in self._quality.plan_order(model):
            if self.why_not(model, provider, instruction) is None:
                return provider
        return self._groups.reference(model) or self._config.models[model].fallback[0]

    async def score(self, request: ScoreRequest, kept: list[KeptScores] | None = None) -> ScoredPairs:
        """The first answer the plan gives; AllProvidersFailed (or a subclass) when none does.

        `kept` receives, as they come, the answered calls of steps that did not give the answer (a
        split call that failed part-way, a hedge that lost, a call cut by the deadline): they were
        paid for, and the caller caches them whatever this returns or raises.
        """
        failures: list[ProviderFailure] = []
        answers = KeptAnswers([] if kept is None else kept)
        answer = await self._walk(request, self._provider_steps(request, failures), failures, answers)
        if answer is None:
            panic = self._panic_step(request, failures)
            if panic is not None:
                answer = await self._walk(request, [panic], failures, answers)
        if answer is None and await self._waited_out_rate_limits(request, failures):
            answer = await self._walk(request, self._provider_steps(request, failures), failures, answers)
        if answer is not None:
            return answer
        if self._config.resilience.last_resort == "lexical":
            return _lexical(request)
        raise AllProvidersFailed.of(request.model, failures, utc_now())

    def why_not(
        self, model: str, provider: str, instruction: str | None, over_budget: bool = False
    ) -> ProviderFailure | None:
        """Why the plan would pass this provider over now, or None: the one rule the router and /readyz share.

        `over_budget` is what a report of the ledger says; the router learns it by reserving instead.
        """
        health = self._health[provider]
        skip = unavailable(self._clients[provider], health.breaker, instruction, over_budget, health.rate_limited_for())
        return skip or self._quality.skip(model, provider)

    def _provider_steps(self, request: ScoreRequest, failures: list[ProviderFailure]) -> list[Step]:
        """Steps 1 and 2 of the plan; providers that cannot take the request are noted as skipped."""
        steps = []
        for model in (request.model, *self._config.models[request.model].fallback_models):
            for provider in self._quality.plan_order(model):  # failing canaries last
                skip = self.why_not(model, provider, request.missing.instruction)
                if skip is None:
                    steps.append(self._step(request, model, self._clients[provider]))
                    continue
                if skip.kind in ("breaker_open", "quality", "rate_limited"):
                    self._guard.note_skip(skip)
                else:
                    note_attempt(skip.provider, skip.kind, 0.0)  # the request log lists every provider passed over
                failures.append(skip)
        return steps

    def _step(self, request: ScoreRequest, model: str, client: ProviderClient, panic: bool = False) -> Step:
        group, scale = self._groups.placement(model, client.name)
        whole = model != request.model or group != request.group
        return Step(model, client, group, whole=whole, panic=panic, scale=scale)

    def _panic_step(self, request: ScoreRequest, failures: Sequence[ProviderFailure]) -> Step | None:
        """Step 3: when no provider was called and open breakers kept some out, the one opened first.

        Refusing would turn a short joint outage into one as long as the breakers' cool-down;
        letting one provider through finds out at once whether it has recovered, and a failure
        opens its breaker again, so the next request tries the other one.
        """
        if any(not failure.skipped for failure in failures):
            return None  # a provider was called and failed: this is no breaker blackout
        model = request.model
        refused = {failure.provider for failure in failures if failure.kind == "breaker_open"}
        for candidate_model in (model, *self._config.models[model].fallback_models):
            providers = [p for p in self._config.models[candidate_model].fallback if p in refused]
            target = first_opened(providers, self._health)
            if target is not None:
                return self._step(request, candidate_model, self._clients[target], panic=True)
        return None

    async def _waited_out_rate_limits(self, request: ScoreRequest, failures: Sequence[ProviderFailure]) -> bool:
        """Step 3b: nobody answered and a rate limit kept some provider out: wait until the first one
        lifts when that fits well inside the deadline (half the time left), so the plan can run again."""
        limited = {f.provider for f in failures if f.kind in ("rate_limited", "http_429")}
        if not limited or request.deadline is None:
            return False
        wait = min(self._health[provider].rate_limited_for() for provider in limited)
        left = request.deadline - asyncio.get_running_loop().time()
        if wait > left / 2:
            return False
        await asyncio.sleep(wait)
        return True

    async def _walk(
        self, request: ScoreRequest, steps: list[Step], failures: list[ProviderFailure], kept: KeptAnswers
    ) -> ScoredPairs | None:
        pending = list(steps)
        while pending:
            first = pending.pop(0)
            if self._hedge_delay(first.client) is None:
                # No hedge can join this step: await it here, without a task and a race to set up.
                outcome = await _outcome(self._call(request, first, pending, kept))
                answer = self._accept(request, first, outcome, failures, kept)
                if answer is not None:
                    return answer
                continue
            calls = {self._start(request, first, pending, kept): first}
            try:
                answer = await self._race(request, calls, pending, failures, kept)
            finally:
                # Also when this request is cancelled (its deadline passed, its client left): no
                # provider call may outlive it, holding a connection, a reservation and a breaker slot.
                await _cancel_all(calls)
            if answer is not None:
                return answer
        return None

    async def _race(
        self, request: ScoreRequest, calls: dict[Attempt, Step], pending: list[Step], failures: list[ProviderFailure],
        kept: KeptAnswers,
    ) -> ScoredPairs | None:
        """The first valid answer among `calls`, hedging to the next step on a delay; None if all failed."""
        first = next(iter(calls.values()))
        hedge_delay = self._hedge_delay(first.client)
        while calls:
            hedge_to = pending[0] if pending and len(calls) == 1 and kept.interchangeable(request, first, pending[0]) else None
            timeout = hedge_delay if hedge_to is not None else None
            done, _ = await asyncio.wait(calls, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:  # the hedge delay passed with no answer: ask the next provider too
                hedge = pending.pop(0)  # hedge_to, which a timeout implies was set
                calls[self._start(request, hedge, pending, kept, hedged=True)] = hedge
                continue
            for task in done:
                step = calls.pop(task)
                answer = self._accept(request, step, await _outcome(task), failures, kept)
                if answer is not None:
                    return answer
        return None

    def _accept(
        self, request: ScoreRequest, step: Step, outcome: tuple[list[float], Usage] | ProviderFailure,
        failures: list[ProviderFailure], kept: KeptAnswers,
    ) -> ScoredPairs | None:
        """A step's answer; None when it failed (noted) and the next step may follow."""
        if isinstance(outcome, ProviderFailure):
            kept.failed(request, step)
            if not outcome.fallback_allowed:
                raise UpstreamRejected(outcome) from None
            failures.append(outcome)
            return None
        self._note_fallback(request.model, failures, step.client.name)
        if step.model == request.model:
            self._quality.maybe_shadow(step.model, step.client.name, kept.pairs_sent(step), outcome[0])  # raw: agreement
        raw, usage = outcome
        # On the group's scale before they are cached beside its scores, ranked, or returned; scores
        # carried from earlier calls of this group are on it already (KeptScores.scores_of).
        mapped = raw if step.scale is None else step.scale.apply(raw)
        scores, usage = kept.answered(step, mapped, usage)
        carried = len(scores) != len(raw)
        raw_scores = None if step.scale is None or carried else raw
        return ScoredPairs(scores, usage, step.client.name, step.model, step.group, whole=step.whole, raw_scores=raw_scores)

    def _start(
        self, request: ScoreRequest, step: Step, later: Sequence[Step], kept: KeptAnswers, hedged: bool = False
    ) -> Attempt:
        return asyncio.ensure_future(self._call(request, step, later, kept, hedged))

    def _call(
        self, request: ScoreRequest, step: Step, later: Sequence[Step], kept: KeptAnswers, hedged: bool = False
    ) -> Coroutine[Any, Any, tuple[list[float], Usage]]:
        entry = kept.open(request, step)
        ends_at = self._attempt_end(request, entry.pairs, step, later)
        if step.panic:
            self._metrics.record_panic_call(model=request.model, provider=step.client.name)
        return self._guard.score(step.client, entry.pairs, ends_at, panic=step.panic, answered=entry.calls, hedged=hedged)

    def _attempt_end(self, request: ScoreRequest, pairs: Batch, step: Step, later: Sequence[Step]) -> float | None:
        """When this attempt must give up, leaving the steps after it their share of the deadline."""
        if request.deadline is None:
            return None
        now = asyncio.get_running_loop().time()
        later_limits = [
            self._guard.own_limit(s.client, len(pairs_of(request, s)))
            for s in later
            if self._health[s.client.name].breaker.state != "open"
        ]
        own = self._guard.own_limit(step.client, len(pairs))
        return now + attempt_seconds(request.deadline - now, own, later_limits)

    def _note_fallback(self, model: str, failures: list[ProviderFailure], winner: str) -> None:
        """Count a fallback when a provider that was actually called failed before the winner."""
        called = [f for f in failures if not f.skipped]
        if called:
            self._metrics.record_fallback(model=model, from_provider=called[0].provider, to_provider=winner)

    def _hedge_delay(self, client: ProviderClient) -> float | None:
        hedge = self._config.resilience.hedge
        if hedge == "off":
            return None
        if hedge == "p95":
            p95 = self._health[client.name].latency.p95()
            if p95 is None:
                return None  # not enough samples yet to know what slow is
            return max(p95, self._config.resilience.hedge_min_ms / 1000)
        return float(hedge) / 1000


def unavailable(
    client: ProviderClient, breaker: CircuitBreaker, instruction: str | None, over_budget: bool = False,
    rate_limited_for: float = 0.0,
) -> ProviderFailure | None:
    """Why a provider cannot be called now, whatever the model: its config, key, rate limit, breaker or budget."""
    reason = client.unusable_reason(instruction)
    if reason is not None:
        return ProviderFailure(client.name, reason, kind="unusable")
    if rate_limited_for > 0:
        return ProviderFailure(client.name, f"rate limited for {rate_limited_for:.1f}s more (its 429's Retry-After)",
                               kind="rate_limited")
    if breaker.state == "open":
        return ProviderFailure(client.name, "circuit open after repeated failures", kind="breaker_open")
    if over_budget:
        return ProviderFailure(client.name, "budget exhausted", kind="budget")
    return None


def first_opened(providers: Sequence[str], health: HealthBoard) -> str | None:
    """Of these providers, the one whose breaker opened first and is not closed again; the panic target."""
    opened = [
        (status.opened_at, provider)
        for provider in providers
        if (status := health[provider].breaker.status()).state != "closed" and status.opened_at is not None
    ]
    return min(opened)[1] if opened else None


def _lexical(request: ScoreRequest) -> ScoredPairs:
    """Step 4: BM25 of every pair against its own query's passages, so the client still gets an order.

    Lexical and model scores are not comparable: the whole request is scored this way, nothing
    of it is cached, and the result says so.
    """
    whole = request.whole
    scores = [0.0] * len(whole)
    for query, positions in whole.positions_by_query().items():
        for position, score in zip(positions, lexical_scores(query, [whole.documents[p] for p in positions])):
            scores[position] = score
    return ScoredPairs(scores, Usage(), DEGRADED_LEXICAL, request.model, DEGRADED_LEXICAL, whole=True, degraded=True)


async def _outcome(call: Awaitable[tuple[list[float], Usage]]) -> tuple[list[float], Usage] | ProviderFailure:
    try:
        return await call
    except ProviderFailure as failure:
        return failure


async def _cancel_all(calls: Mapping[Attempt, Step]) -> None:
    for task in calls:
        task.cancel()
    # Let the losers release their reservations before the winner's answer goes out.
    await asyncio.gather(*calls, return_exceptions=True)
