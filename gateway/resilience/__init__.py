"""Pure building blocks the router uses to stay up when providers do not: no I/O in here.

    breaker.py   CircuitBreaker: stop calling a provider that keeps failing, probe it later
    retry.py     backoff with full jitter, Retry-After, a retry budget, transient statuses
    latency.py   LatencyTracker: a provider's recent p95, for hedging
    lexical.py   lexical_scores: BM25 over the request's own passages, the last resort
    window.py    SlidingCounts: bucketed counters over a sliding time window
    tokens.py    tokenize: Unicode words, lowercased and lightly stemmed, for lexical.py

Everything that reads time takes a clock (monotonic seconds) and everything random takes an
rng, so tests drive them step by step. None of it is thread-safe: one event loop owns each object.
"""

from gateway.resilience.breaker import BreakerConfig, BreakerState, BreakerStatus, CircuitBreaker
from gateway.resilience.latency import LatencyTracker
from gateway.resilience.lexical import lexical_scores
from gateway.resilience.retry import RetryBudget, full_jitter_backoff, is_transient_status, parse_retry_after

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
