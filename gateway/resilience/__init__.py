"""Staying up when providers do not: the guarded call, what is known of each provider, and the
pure building blocks both use.

    guarded_call.py  GuardedCall: one provider call with budget reserved, breaker asked, time
                     bounded, transient failures retried (the only module here that does I/O)
    health.py        HealthBoard: each provider's breaker, latency and retry budget, kept across reloads

    breaker.py   CircuitBreaker: stop calling a provider that keeps failing, probe it later
    retry.py     backoff with full jitter, Retry-After, a retry budget, transient statuses
    latency.py   LatencyTracker: a provider's recent p95, for hedging
    lexical.py   lexical_scores: BM25 over the request's own passages, the last resort
    window.py    SlidingCounts: bucketed counters over a sliding time window
    tokens.py    tokenize: Unicode words, lowercased and lightly stemmed, for lexical.py

May import: providers, budget, observability, config, models, errors. Not quality or scoring,
which build on it.

Everything that reads time takes a clock (monotonic seconds) and everything random takes an
rng, so tests drive them step by step. None of it is thread-safe: one event loop owns each object.
"""

from gateway.errors import is_transient_status
from gateway.observability.metrics import BreakerState
from gateway.resilience.breaker import BreakerConfig, BreakerStatus, CircuitBreaker
from gateway.resilience.latency import LatencyTracker
from gateway.resilience.lexical import lexical_scores
from gateway.resilience.retry import RetryBudget, full_jitter_backoff, parse_retry_after

__all__ = [
    "BreakerConfig",
    "BreakerState",
    "BreakerStatus",
    "CircuitBreaker",
    "LatencyTracker",
    "RetryBudget",
    "full_jitter_backoff",
    "is_transient_status",
    "lexical_scores",
    "parse_retry_after",
]
