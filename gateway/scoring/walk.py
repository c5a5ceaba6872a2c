"""Walking a plan: each step in turn until one answers, with hedging (see gateway.scoring.router).

A step no hedge can join is awaited directly; otherwise its call races a delay, after which the
next step (the same model and pairs) is asked too, and the first valid answer wins. Each attempt
gets its slice of the request's deadline (gateway.resilience.deadline). An answer is put on its
group's scale here (a calibrated provider's), merged with what earlier calls of the same group
answered (gateway.scoring.kept), and offered to shadow traffic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Mapping, Sequence
from typing import Any

from gateway.errors import ProviderFailure, UpstreamRejected
from gateway.models import Batch, ScoredPairs, ScoreRequest, Usage
from gateway.providers.client import ProviderClient
from gateway.quality.guard import QualityGuard
from gateway.quality.parts import Parts
from gateway.resilience.deadline import attempt_seconds
from gateway.scoring.kept import KeptAnswers, pairs_of
from gateway.scoring.plan import Step

Attempt = asyncio.Task[tuple[list[float], Usage]]  # one provider call under way: its scores and usage


class PlanWalk:
    def __init__(self, parts: Parts, quality: QualityGuard) -> None:
        self._config = parts.config
        self._calls = parts.calls
        self._health = parts.health
        self._metrics = parts.metrics
        self._quality = quality

    async def walk(
        self, request: ScoreRequest, steps: list[Step], failures: list[ProviderFailure], kept: KeptAnswers
    ) -> ScoredPairs | None:
        pending = list(steps)
        while pending:
            first = pending.pop(0)
            if self._hedge_delay(first.client) is None:
                # No hedge can join this step: await it here, without a task and a race to set up.
                outcome: tuple[list[float], Usage] | ProviderFailure
                try:
                    outcome = await self._call(request, first, pending, kept)
                except ProviderFailure as failure:
                    outcome = failure
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
        return self._calls.score(step.client, entry.pairs, ends_at, panic=step.panic, answered=entry.calls, hedged=hedged,
                                 budgets=request.budgets)

    def _attempt_end(self, request: ScoreRequest, pairs: Batch, step: Step, later: Sequence[Step]) -> float | None:
        """When this attempt must give up, leaving the steps after it their share of the deadline."""
        if request.deadline is None:
            return None
        now = asyncio.get_running_loop().time()
        later_limits = [
            self._calls.own_limit(s.client, len(pairs_of(request, s)))
            for s in later
            if self._health[s.client.name].breaker.state != "open"
        ]
        own = self._calls.own_limit(step.client, len(pairs))
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
