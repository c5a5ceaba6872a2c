"""Counter and histogram updates of a moment, written to prometheus-client together.

Each `inc` and `observe` of prometheus-client takes a lock and, for a histogram, walks its
buckets: about 13 of them per cache miss cost ~5% of the miss's CPU (docs/bench-history.md). Here an
update adds to a plain dict, and the sums go to prometheus-client once, FLUSH_DELAY_SECONDS
(50 ms) after the first update since the last write (`observability/deferred.py`), so another
worker's scrape, reading the multiprocess files, sees them at most that late. A scrape in this
process writes what is pending first (`flush`); without a running loop (a script, a test) an
update is written at once.

The histogram's own bucket bounds and values are used (prometheus-client's `_upper_bounds`,
`_buckets`, `_sum`, pinned in tests/test_library_internals.py), and a value lands in the first
bucket whose bound is not below it, as `Histogram.observe` puts it.
"""

from __future__ import annotations

import bisect
from typing import Any

from gateway.observability.deferred import Deferred


class Tally:
    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}  # counter child -> amount to add
        self._observed: dict[Any, list[float]] = {}  # histogram child -> [sum, count per bucket...]
        self._flush_later = Deferred(self.flush)

    def inc(self, counter: Any, amount: float = 1.0) -> None:
        """`counter.inc(amount)`, with the moment's other updates."""
        if amount < 0:
            raise ValueError(f"counters only go up: {amount!r}")  # as prometheus-client says it
        self._counts[counter] = self._counts.get(counter, 0.0) + amount
        if not self._flush_later.book():
            self.flush()  # no loop to wait on: now

    def observe(self, histogram: Any, amount: float) -> None:
        """`histogram.observe(amount)`, with the moment's other updates."""
        pending = self._observed.get(histogram)
        if pending is None:
            pending = self._observed[histogram] = [0.0] * (len(histogram._upper_bounds) + 1)
        pending[0] += amount
        pending[1 + bisect.bisect_left(histogram._upper_bounds, amount)] += 1
        if not self._flush_later.book():
            self.flush()  # no loop to wait on: now

    def flush(self) -> None:
        """Write every pending update to prometheus-client now."""
        counts, self._counts = self._counts, {}
        for counter, amount in counts.items():
            counter.inc(amount)
        observed, self._observed = self._observed, {}
        for histogram, pending in observed.items():
            histogram._sum.inc(pending[0])
            for bucket, count in zip(histogram._buckets, pending[1:]):
                if count:
                    bucket.inc(count)
