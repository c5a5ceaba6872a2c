"""Which provider scores a request: the model's fallback order, first valid answer wins.

With hedging on, a provider that has not answered within its delay gets company: the same
pairs go to the next provider too, the first valid answer wins and the other call is cancelled.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from gateway.config import GatewayConfig
from gateway.errors import AllProvidersFailed, BudgetExhausted, ProviderFailure, UpstreamRejected
from gateway.guard import BudgetSkip, GuardedCall
from gateway.health import HealthBoard
from gateway.models import ScoredPairs
from gateway.observability.metrics import GatewayMetrics
from gateway.providers.client import ProviderClient

Candidate = tuple[str, ProviderClient]  # (canonical model, provider)


class Router:
    def __init__(
        self,
        config: GatewayConfig,
        clients: Mapping[str, ProviderClient],
        guard: GuardedCall,
        health: HealthBoard,
        metrics: GatewayMetrics,
    ) -> None:
        self._config = config
        self._clients = clients
        self._guard = guard
        self._health = health
        self._metrics = metrics

    async def score(
        self,
        model: str,
        queries: Sequence[str],
        documents: Sequence[str],
        instruction: str | None,
        deadline: float | None = None,
    ) -> ScoredPairs:
        """Scores from the model's own providers, in its fallback order."""
        return await self._first_answer(model, [model], queries, documents, instruction, deadline, [])

    def has_fallback_models(self, model: str) -> bool:
        return bool(self._config.models[model].fallback_models)

    async def score_by_fallback_models(
        self,
        model: str,
        queries: Sequence[str],
        documents: Sequence[str],
        instruction: str | None,
        earlier: AllProvidersFailed,
        deadline: float | None = None,
    ) -> ScoredPairs:
        """Scores from the models ops allowed as a fallback, once the model's own providers failed."""
        fallback_models = self._config.models[model].fallback_models
        return await self._first_answer(model, fallback_models, queries, documents, instruction, deadline, list(earlier.failures))

    async def _first_answer(
        self,
        model: str,
        models: Sequence[str],
        queries: Sequence[str],
        documents: Sequence[str],
        instruction: str | None,
        deadline: float | None,
        failures: list[ProviderFailure],
    ) -> ScoredPairs:
        pending = self._usable_candidates(models, instruction, failures)
        while pending:
            first = pending.pop(0)
            calls = {self._start(first, queries, documents, instruction, deadline): first}
            try:
                answer = await self._race(model, calls, pending, queries, documents, instruction, deadline, failures)
            finally:
                # Also when this request is cancelled (its deadline passed, its client left): no
                # provider call may outlive it, holding a connection, a reservation and a breaker slot.
                await _cancel_all(calls)
            if answer is not None:
                return answer
        raise _all_failed(model, failures)

    async def _race(
        self,
        model: str,
        calls: dict[asyncio.Task, Candidate],
        pending: list[Candidate],
        queries: Sequence[str],
        documents: Sequence[str],
        instruction: str | None,
        deadline: float | None,
        failures: list[ProviderFailure],
    ) -> ScoredPairs | None:
        """The first valid answer among `calls`, hedging to `pending` on a delay; None if all failed."""
        hedge_delay = self._hedge_delay(next(iter(calls.values()))[1])
        while calls:
                timeout = hedge_delay if pending and hedge_delay is not None and len(calls) == 1 else None
                done, _ = await asyncio.wait(calls, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:  # the hedge delay passed with no answer: ask the next provider too
                    second = pending.pop(0)
                    calls[self._start(second, queries, documents, instruction, deadline)] = second
                    continue
                for task in done:
                    scored_model, client = calls.pop(task)
                    try:
                        scores, usage = task.result()
                    except ProviderFailure as failure:
                        if not failure.fallback_allowed:
                            raise UpstreamRejected(failure) from None
                        failures.append(failure)
                        continue
                    self._note_fallback(model, failures, client.name)
                    return ScoredPairs(scores=scores, usage=usage, provider=client.name, model=scored_model)
        return None

    def _note_fallback(self, model: str, failures: list[ProviderFailure], winner: str) -> None:
        """Count a fallback when a provider that was actually called failed before the winner."""
        called = [f for f in failures if not f.skipped]
        if called:
            self._metrics.record_fallback(model=model, from_provider=called[0].provider, to_provider=winner)

    def _usable_candidates(self, models: Sequence[str], instruction: str | None, failures: list[ProviderFailure]) -> list[Candidate]:
        """Providers that could take the request, in order; the others are noted as skipped."""
        candidates = []
        for scored_model in models:
            for provider in self._config.models[scored_model].fallback:
                client = self._clients[provider]
                reason = client.unusable_reason(instruction)
                if reason is None:
                    candidates.append((scored_model, client))
                else:
                    failures.append(ProviderFailure(client.name, f"skipped: {reason}", skipped=True))
        return candidates

    def _start(self, candidate: Candidate, queries, documents, instruction, deadline) -> asyncio.Task:
        return asyncio.ensure_future(self._guard.score(candidate[1], queries, documents, instruction, deadline))

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


async def _cancel_all(calls: Mapping[asyncio.Task, Candidate]) -> None:
    for task in calls:
        task.cancel()
    # Let the losers release their reservations before the winner's answer goes out.
    await asyncio.gather(*calls, return_exceptions=True)


def _all_failed(model: str, failures: list[ProviderFailure]) -> AllProvidersFailed:
    """502/504 when providers were tried and failed; 429 when none was left but for budgets."""
    refusals = [f.refusal for f in failures if isinstance(f, BudgetSkip) and f.refusal is not None]
    if refusals and all(f.skipped for f in failures):
        resets = min(refusal.resets_at for refusal in refusals)
        seconds = math.ceil((resets - datetime.now(timezone.utc)).total_seconds())
        return BudgetExhausted(model, failures, retry_after_seconds=max(1, seconds))
    return AllProvidersFailed(model, failures)
