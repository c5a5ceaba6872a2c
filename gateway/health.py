"""What the gateway has learned about each provider; kept across config reloads."""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass

from gateway.budget import TokenEstimator
from gateway.config import ResilienceConfig
from gateway.resilience import BreakerConfig, CircuitBreaker, LatencyTracker, RetryBudget

RECENT_ERRORS = 50


@dataclass(frozen=True, slots=True)
class RecentError:
    at: float  # wall-clock seconds
    provider: str
    reason: str


@dataclass(slots=True)
class ProviderHealth:
    breaker: CircuitBreaker
    latency: LatencyTracker
    retry_budget: RetryBudget
    estimator: TokenEstimator


class HealthBoard:
    """One ProviderHealth per provider name, made on first use."""

    def __init__(self, settings: ResilienceConfig, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.rng = rng or random.Random()
        self._providers: dict[str, ProviderHealth] = {}
        self.recent_errors: deque[RecentError] = deque(maxlen=RECENT_ERRORS)

    def __getitem__(self, provider: str) -> ProviderHealth:
        health = self._providers.get(provider)
        if health is None:
            health = self._providers[provider] = self._new_health()
        return health

    def known(self) -> dict[str, ProviderHealth]:
        return dict(self._providers)

    def note_error(self, provider: str, reason: str) -> None:
        self.recent_errors.append(RecentError(time.time(), provider, reason))

    def _new_health(self) -> ProviderHealth:
        s = self.settings
        breaker = CircuitBreaker(BreakerConfig(
            consecutive_failures=s.breaker_consecutive_failures,
            error_rate=s.breaker_error_rate,
            window_seconds=s.breaker_window_seconds,
            min_calls=s.breaker_min_calls,
            cooldown_seconds=s.breaker_cooldown_seconds,
        ))
        return ProviderHealth(
            breaker=breaker,
            latency=LatencyTracker(),
            retry_budget=RetryBudget(ratio=s.retry_budget_ratio),
            estimator=TokenEstimator(),
        )
