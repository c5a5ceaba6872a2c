"""What the gateway has learned about each provider; kept across config reloads.

A reload hands the board the new [resilience] settings: breakers and retry budgets keep what
they saw and apply the new thresholds from their next outcome on.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field

from gateway.budget import TokenEstimator
from gateway.config import ResilienceConfig
from gateway.resilience import BreakerConfig, CircuitBreaker, LatencyTracker, RetryBudget
from gateway.resilience.refusal import RefusalTracker

RECENT_ERRORS = 50
RECENT_CHANGES = 20
# Skips that repeat on every request while they last: one line each, counted, not fifty of the same.
REPEATING_KINDS = frozenset({"budget", "rate_limited", "refusing"})


@dataclass(frozen=True, slots=True)
class RecentError:
    at: float  # wall-clock seconds
    provider: str
    reason: str
    kind: str = ""  # a ProviderFailure kind; "" when not said
    count: int = 1  # in a row, for the kinds that repeat


@dataclass(frozen=True, slots=True)
class Change:
    """Something an operator would want to know changed: a reload, a breaker, a refusal, a verdict."""

    at: float  # wall-clock seconds
    what: str


@dataclass(frozen=True, slots=True)
class BudgetRefusal:
    at: float  # wall-clock seconds of the latest refusal
    resets_at: float  # wall-clock seconds: when the refusing window ends


@dataclass(slots=True)
class ProviderHealth:
    breaker: CircuitBreaker
    latency: LatencyTracker
    retry_budget: RetryBudget
    estimator: TokenEstimator
    reported_calls: int = 0  # answers that carried usage: until one does, the pooled estimate bills it
    limited_until: float = 0.0  # monotonic: a 429 asked for no call before then
    refusal: RefusalTracker = field(default_factory=RefusalTracker)  # its 401/403s

    def rate_limited_for(self, now: float | None = None) -> float:
        """Seconds until the provider's rate limit lifts; 0 when it may be called."""
        return max(0.0, self.limited_until - (time.monotonic() if now is None else now))

    def rate_limit(self, seconds: float, now: float | None = None) -> None:
        """No call before `seconds` from now; a later 429 may lengthen the wait, never shorten it."""
        self.limited_until = max(self.limited_until, (time.monotonic() if now is None else now) + seconds)


class HealthBoard:
    """One ProviderHealth per provider name, made on first use."""

    def __init__(self, settings: ResilienceConfig, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.rng = rng or random.Random()
        self._providers: dict[str, ProviderHealth] = {}
        self.recent_errors: deque[RecentError] = deque(maxlen=RECENT_ERRORS)
        self.changes: deque[Change] = deque(maxlen=RECENT_CHANGES)
        # Per budget scope and period ("provider:deepinfra", "day"): the latest refusal to reserve.
        self.budget_refusals: dict[tuple[str, str], BudgetRefusal] = {}
        # Learned from every provider's reported usage: how a provider whose answers never carry
        # usage (TEI) is billed, calibrated against those that do rather than a fixed guess.
        self.pooled_estimator = TokenEstimator()

    def __getitem__(self, provider: str) -> ProviderHealth:
        health = self._providers.get(provider)
        if health is None:
            health = self._providers[provider] = self._new_health()
        return health

    def known(self) -> dict[str, ProviderHealth]:
        return dict(self._providers)

    def billing_estimator(self, provider: str) -> TokenEstimator:
        """The token estimate a provider's calls are reserved and, when it reports no usage, billed by."""
        health = self[provider]
        return health.estimator if health.reported_calls else self.pooled_estimator

    def note_error(self, provider: str, reason: str, kind: str = "") -> None:
        """Under Recent errors; a skip that repeats replaces its previous line, counted."""
        count = 1
        if kind in REPEATING_KINDS:
            for earlier in self.recent_errors:
                if earlier.provider == provider and earlier.kind == kind:
                    self.recent_errors.remove(earlier)
                    count = earlier.count + 1
                    break
        self.recent_errors.append(RecentError(time.time(), provider, reason, kind, count))

    def note_change(self, what: str) -> None:
        self.changes.append(Change(time.time(), what))

    def note_budget_refusal(self, scope: str, period: str, resets_at: float) -> None:
        self.budget_refusals[(scope, period)] = BudgetRefusal(time.time(), resets_at)

    def budget_refusing(self, scope: str, period: str, since: float) -> bool:
        """Whether reservations in this window were refused after `since` (wall clock), and it has not reset."""
        refusal = self.budget_refusals.get((scope, period))
        return refusal is not None and refusal.at >= since and refusal.resets_at > time.time()

    def apply(self, settings: ResilienceConfig) -> None:
        """Settings from a reloaded config, for every provider's next outcome."""
        self.settings = settings
        for health in self._providers.values():
            health.breaker.reconfigure(_breaker_config(settings))
            health.retry_budget.ratio = settings.retry_budget_ratio

    def _new_health(self) -> ProviderHealth:
        return ProviderHealth(
            breaker=CircuitBreaker(_breaker_config(self.settings)),
            latency=LatencyTracker(),
            retry_budget=RetryBudget(ratio=self.settings.retry_budget_ratio),
            estimator=TokenEstimator(),
        )


def _breaker_config(settings: ResilienceConfig) -> BreakerConfig:
    return BreakerConfig(
        consecutive_failures=settings.breaker_consecutive_failures,
        error_rate=settings.breaker_error_rate,
        window_seconds=settings.breaker_window_seconds,
        min_calls=settings.breaker_min_calls,
        cooldown_seconds=settings.breaker_cooldown_seconds,
    )
