"""One provider call, guarded: budget reserved, breaker asked, transient failures retried.

    admit    budget reservation (skip when it does not fit), then the breaker (skip when open)
    call     the provider, retried on the same provider for transient failures with full-jitter
             backoff or its Retry-After, within the request's deadline and the retry budget
    account  settle the reservation to the real cost (or release it), tell the breaker
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.budget import GATEWAY_SCOPE, Ledger, Limit, Refusal, Reservation, unheld_reservation, utc_now
from gateway.config import GatewayConfig, ProviderConfig
from gateway.errors import ProviderFailure
from gateway.health import HealthBoard, ProviderHealth
from gateway.models import Usage
from gateway.providers.client import ProviderClient
from gateway.observability.metrics import UPSTREAM_ERROR_REASONS, GatewayMetrics
from gateway.observability.trace import note_attempt
from gateway.resilience import full_jitter_backoff, parse_retry_after

# A reservation outlives its call by this much, so a slow settle never frees budget early.
_HOLD_MARGIN_SECONDS = 30.0


@dataclass
class BudgetSkip(ProviderFailure):
    """Skipped because a budget window would overflow; says when the window resets."""

    refusal: Refusal | None = None


class GuardedCall:
    def __init__(self, config: GatewayConfig, ledger: Ledger, health: HealthBoard, metrics: GatewayMetrics) -> None:
        self._config = config
        self._ledger = ledger
        self._health = health
        self._metrics = metrics

    async def score(
        self,
        client: ProviderClient,
        queries: Sequence[str],
        documents: Sequence[str],
        instruction: str | None,
        deadline: float | None,
    ) -> tuple[list[float], Usage]:
        health = self._health[client.name]
        chars = _chars(queries, documents, instruction)
        try:
            reservation = await self._reserve(client, health, chars, deadline)
        except BudgetSkip:
            self._metrics.record_upstream_error(provider=client.name, reason="budget")
            note_attempt(client.name, "budget", 0.0)
            raise
        if not health.breaker.allow():
            await self._ledger.release(reservation)
            self._metrics.record_upstream_error(provider=client.name, reason="breaker_open")
            note_attempt(client.name, "breaker_open", 0.0)
            raise ProviderFailure(client.name, "skipped: circuit open after repeated failures", skipped=True, kind="breaker_open")
        try:
            scores, usage = await self._call_with_retries(client, health, queries, documents, instruction, deadline)
        except ProviderFailure as failure:
            await self._ledger.release(reservation)
            if failure.fallback_allowed:
                health.breaker.record_failure(failure.reason)
                self._health.note_error(client.name, failure.reason)
            else:
                health.breaker.record_cancelled()  # the request was at fault, not the provider
            self._metrics.set_breaker_state(provider=client.name, state=health.breaker.state)
            raise
        except BaseException:
            # Cancelled (a hedge won, the client left, the deadline passed): not the provider's fault.
            health.breaker.record_cancelled()
            await asyncio.shield(self._ledger.release(reservation))
            raise
        health.breaker.record_success()
        self._metrics.set_breaker_state(provider=client.name, state=health.breaker.state)
        await self._ledger.settle(reservation, usage.cost_usd, usage.tokens)
        self._metrics.record_usage(provider=client.name, tokens=usage.tokens, cost_usd=usage.cost_usd)
        if usage.tokens:
            health.estimator.observe(chars, usage.tokens)
        return scores, usage

    async def _reserve(self, client: ProviderClient, health: ProviderHealth, chars: int, deadline: float | None) -> Reservation:
        price = client.config.price_per_million_tokens
        estimate = health.estimator.estimate_tokens(chars) * price / 1e6
        hold = _HOLD_MARGIN_SECONDS + (deadline - _now() if deadline is not None else client.config.timeout_seconds * 3)
        limits = [provider_limit(client.name, client.config), gateway_limit(self._config)]
        if all(limit.daily_usd is None and limit.monthly_usd is None for limit in limits):
            return unheld_reservation(limits, utc_now())  # nothing to enforce: track spend only
        outcome = await self._ledger.reserve(limits, estimate, hold_seconds=max(hold, 1.0))
        if isinstance(outcome, Refusal):
            period = "daily" if outcome.period == "day" else "monthly"
            raise BudgetSkip(
                client.name,
                f"skipped: {scope_label(outcome.scope)} {period} budget of ${outcome.limit_usd:g} would be exceeded "
                f"(spent ${outcome.spent_usd:.6f}, in flight ${outcome.reserved_usd:.6f})",
                skipped=True,
                kind="budget",
                refusal=outcome,
            )
        return outcome

    async def _call_with_retries(
        self,
        client: ProviderClient,
        health: ProviderHealth,
        queries: Sequence[str],
        documents: Sequence[str],
        instruction: str | None,
        deadline: float | None,
    ) -> tuple[list[float], Usage]:
        health.retry_budget.record_call()
        attempt = 0
        while True:
            started = _now()
            try:
                result = await client.score(queries, documents, instruction)
            except ProviderFailure as failure:
                self._observe_call(client.name, _now() - started, failure.kind)
                wait = self._retry_wait(failure, attempt, health, deadline)
                if wait is None:
                    raise
                health.retry_budget.record_retry()
                attempt += 1
                await asyncio.sleep(wait)
                continue
            elapsed = _now() - started
            health.latency.record(elapsed)
            self._observe_call(client.name, elapsed, "ok")
            return result

    def _observe_call(self, provider: str, seconds: float, outcome: str) -> None:
        self._metrics.record_upstream_call(provider=provider, seconds=seconds)
        if outcome in UPSTREAM_ERROR_REASONS:
            self._metrics.record_upstream_error(provider=provider, reason=outcome)  # type: ignore[arg-type]
        note_attempt(provider, outcome, seconds)

    def _retry_wait(self, failure: ProviderFailure, attempt: int, health: ProviderHealth, deadline: float | None) -> float | None:
        """Seconds to wait before trying the same provider again, or None: move on."""
        settings = self._config.resilience
        if not failure.transient or attempt >= settings.max_retries or not health.retry_budget.can_retry():
            return None
        backoff = full_jitter_backoff(attempt, settings.retry_base_ms / 1000, settings.retry_cap_ms / 1000, self._health.rng)
        asked = parse_retry_after(failure.retry_after, time.time())
        wait = max(backoff, asked or 0.0)
        if deadline is not None and _now() + wait >= deadline:
            return None  # the wait alone would spend the request's deadline: better the next provider
        return wait


def provider_limit(name: str, provider: ProviderConfig) -> Limit:
    return Limit(name, provider.budget.daily_usd, provider.budget.monthly_usd)


def gateway_limit(config: GatewayConfig) -> Limit:
    return Limit(GATEWAY_SCOPE, config.budget.daily_usd, config.budget.monthly_usd)


def every_limit(config: GatewayConfig) -> list[Limit]:
    """Each provider's budget and the gateway's: what /admin/spend, /status and /metrics report."""
    return [*(provider_limit(name, p) for name, p in config.providers.items()), gateway_limit(config)]


def scope_label(scope: str) -> str:
    """A ledger scope as people read it: the provider's name, or "gateway"."""
    return "gateway" if scope == GATEWAY_SCOPE else scope


def _chars(queries: Sequence[str], documents: Sequence[str], instruction: str | None) -> int:
    per_pair_instruction = len(instruction) if instruction else 0
    return sum(map(len, queries)) + sum(map(len, documents)) + per_pair_instruction * len(documents)


def _now() -> float:
    return asyncio.get_running_loop().time()
