"""The last hour, per minute, in this process: what /status draws and /status.json answers.

A ring of MINUTES minute-buckets; a bucket is reused (cleared) when its minute comes round again,
so memory stays bounded whatever the traffic: per bucket, four request counters, two cache
counters, and per provider a fixed latency histogram, a spend sum and an agreement sum. Recording
is a few dict updates and one bisect (bench/history.py measures it against the request path).

p95 comes from log-spaced histogram bins (each 15% wider than the one before), so a minute's p95
is the upper edge of the bin the 95th percentile falls in: within 15% of the exact figure, which is
what a trend chart needs, at a fixed cost per sample however many requests a minute holds.

With several workers each keeps its own hour: the page says so (the metrics merge across workers;
this deliberately does not, to stay free of I/O on the request path).
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

MINUTES: Final = 60
# lexical: every provider failed and the local BM25 last resort answered (a 200, but no model scored it).
Outcome = Literal["cache", "provider", "lexical", "error"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("cache", "provider", "lexical", "error")
# 0.5 ms .. ~60 s in 15% steps; a sample above the last edge counts in the last bin.
_LATENCY_EDGES: Final = tuple(0.0005 * 1.15**step for step in range(86))


@dataclass(slots=True)
class _Minute:
    minute: int  # whole minutes since the epoch
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    cache_hits: int = 0
    cache_misses: int = 0
    latency: dict[str, list[int]] = field(default_factory=dict)  # provider -> counts per bin
    spend_usd: dict[str, float] = field(default_factory=dict)  # provider -> USD settled
    agreement: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (model, provider) -> [sum MAE, n]


Series = list[float | None]  # one value per minute, oldest first; None: nothing measured that minute


@dataclass(frozen=True, slots=True)
class HistoryView:
    """The hour as series of MINUTES values each, oldest minute first, ready for a chart or JSON."""

    minutes: tuple[int, ...]  # Unix time each minute starts
    requests: Mapping[str, Series]  # outcome -> requests that minute
    cache_hit_rate: Series  # pairs served from the cache / pairs looked up
    p95_ms: Mapping[str, Series]  # provider -> p95 of its answers to requests
    spend_usd: Mapping[str, Series]  # provider -> USD settled (requests, probes and shadow calls)
    agreement_mae: Mapping[str, Mapping[str, Series]]  # model -> provider -> mean |score - reference's|

    def as_json(self) -> dict[str, object]:
        return {
            "minute_seconds": 60, "minutes": list(self.minutes), "requests": dict(self.requests),
            "cache_hit_rate": self.cache_hit_rate, "p95_ms": dict(self.p95_ms), "spend_usd": dict(self.spend_usd),
            "agreement_mae": {model: dict(providers) for model, providers in self.agreement_mae.items()},
        }


class MinuteHistory:
    """Per-minute counters of the last hour; `clock` (Unix seconds) is public so tests can move time."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._ring: list[_Minute | None] = [None] * MINUTES

    def record_request(self, outcome: Outcome, cache_hits: int, cache_misses: int,
                       answers: Iterable[tuple[str, float]] = ()) -> None:
        """One rerank request: its outcome, its pairs looked up, and each (provider, seconds) that answered."""
        bucket = self._now()
        bucket.requests[outcome] += 1
        bucket.cache_hits += cache_hits
        bucket.cache_misses += cache_misses
        for provider, seconds in answers:
            bins = bucket.latency.get(provider)
            if bins is None:
                bins = bucket.latency[provider] = [0] * len(_LATENCY_EDGES)
            bins[min(bisect.bisect_left(_LATENCY_EDGES, seconds), len(_LATENCY_EDGES) - 1)] += 1

    def record_spend(self, provider: str, usd: float) -> None:
        if usd:
            spend = self._now().spend_usd
            spend[provider] = spend.get(provider, 0.0) + usd

    def record_agreement(self, model: str, provider: str, mae: float) -> None:
        """One shadow comparison of `provider` with the model's reference: its mean absolute difference."""
        sums = self._now().agreement.setdefault((model, provider), [0.0, 0.0])
        sums[0] += mae
        sums[1] += 1

    def view(self) -> HistoryView:
        current = self._minute()
        minutes = range(current - MINUTES + 1, current + 1)
        buckets = [self._bucket_at(minute) for minute in minutes]
        providers = sorted({p for b in buckets if b for p in (*b.latency, *b.spend_usd)})
        pairs = sorted({key for b in buckets if b for key in b.agreement})
        agreement: dict[str, dict[str, Series]] = {}
        for model, provider in pairs:
            agreement.setdefault(model, {})[provider] = [_mean(b.agreement.get((model, provider))) if b else None
                                                         for b in buckets]
        return HistoryView(
            minutes=tuple(minute * 60 for minute in minutes),
            requests={o: [float(b.requests[o]) if b else 0.0 for b in buckets] for o in OUTCOMES},
            cache_hit_rate=[_rate(b) for b in buckets],
            p95_ms={p: [_p95_ms(b.latency.get(p)) if b else None for b in buckets] for p in providers
                    if any(b and p in b.latency for b in buckets)},
            spend_usd={p: [b.spend_usd.get(p, 0.0) if b else 0.0 for b in buckets] for p in providers
                       if any(b and b.spend_usd.get(p) for b in buckets)},
            agreement_mae=agreement,
        )

    def _minute(self) -> int:
        return int(self.clock() // 60)

    def _now(self) -> _Minute:
        minute = self._minute()
        slot = minute % MINUTES
        bucket = self._ring[slot]
        if bucket is None or bucket.minute != minute:
            bucket = self._ring[slot] = _Minute(minute)
        return bucket

    def _bucket_at(self, minute: int) -> _Minute | None:
        bucket = self._ring[minute % MINUTES]
        return bucket if bucket is not None and bucket.minute == minute else None


def _rate(bucket: _Minute | None) -> float | None:
    if bucket is None or not (looked_up := bucket.cache_hits + bucket.cache_misses):
        return None
    return bucket.cache_hits / looked_up


def _mean(sums: list[float] | None) -> float | None:
    return None if not sums else sums[0] / sums[1]


def _p95_ms(bins: list[int] | None) -> float | None:
    if not bins:
        return None
    needed = math.ceil(0.95 * sum(bins))
    seen = 0
    for edge, count in zip(_LATENCY_EDGES, bins, strict=True):
        seen += count
        if seen >= needed:
            return edge * 1000
    return _LATENCY_EDGES[-1] * 1000
