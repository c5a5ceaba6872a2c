"""A provider's recent latency: when to hedge to the next provider, and when an attempt is too slow to wait for.

Only the last `capacity` latencies are kept, so the figure follows the provider as it speeds up
or slows down, and memory stays fixed. Record answers only: a timeout or an error says nothing
about how long an answer takes, and would drag the percentile toward the timeout. Each answer
is recorded with the number of pairs it scored, because a 1,000-passage call takes longer than
a 20-passage one without being any less healthy.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

# Fewer answers than this give no p95: one slow call would be "the p95".
MIN_SAMPLES = 20


class LatencyTracker:
    def __init__(self, capacity: int = 200, min_samples: int = MIN_SAMPLES) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if not 1 <= min_samples <= capacity:
            raise ValueError(f"min_samples must be in [1, capacity={capacity}], got {min_samples}")
        self._samples: deque[float] = deque(maxlen=capacity)
        self._pairs: deque[int] = deque(maxlen=capacity)
        # The same values kept sorted as they come and go: every attempt asks for a quantile and
        # a median, and sorting the window for each took more than the rest of the guard.
        self._sorted_samples: list[float] = []
        self._sorted_pairs: list[int] = []
        self._min_samples = min_samples

    def __len__(self) -> int:
        return len(self._samples)

    def record(self, seconds: float, pairs: int = 1) -> None:
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"a latency is a finite, non-negative number of seconds, got {seconds!r}")
        pairs = max(1, pairs)
        if len(self._samples) == self._samples.maxlen:
            _remove_sorted(self._sorted_samples, self._samples[0])
            _remove_sorted(self._sorted_pairs, self._pairs[0])
        self._samples.append(seconds)
        self._pairs.append(pairs)
        bisect.insort(self._sorted_samples, seconds)
        bisect.insort(self._sorted_pairs, pairs)

    def slow_after(self, pairs: int, multiple: float, floor_seconds: float) -> float | None:
        """Seconds past which a call of `pairs` pairs is a failure, not a slow answer; None until known.

        `multiple` times the recent p99, stretched for a call larger than the typical (median)
        one in proportion to its size: the stretch overestimates (part of a call's time does
        not grow with its size), which errs toward waiting, never toward cutting a good call.
        """
        p99 = self.quantile(0.99)
        if p99 is None:
            return None
        typical_pairs = self._sorted_pairs[len(self._sorted_pairs) // 2]
        stretch = max(1.0, pairs / typical_pairs)
        return max(floor_seconds, p99 * multiple * stretch)

    def p95(self) -> float | None:
        return self.quantile(0.95)

    def quantile(self, q: float) -> float | None:
        """The nearest-rank q-quantile of the recent latencies; None until `min_samples` were seen.

        Nearest rank returns a latency that was actually observed, never an interpolation, and
        a p95 of 20 samples is their second slowest rather than something between two.
        """
        if not 0.0 < q <= 1.0:
            raise ValueError(f"q must be in (0, 1], got {q}")
        count = len(self._samples)
        if count < self._min_samples:
            return None
        rank = math.ceil(q * count)  # 1-based
        return self._sorted_samples[rank - 1]


def _remove_sorted(values: list[float] | list[int], value: float) -> None:
    del values[bisect.bisect_left(values, value)]
