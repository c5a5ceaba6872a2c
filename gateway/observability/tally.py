"""Counter and histogram updates of one event-loop turn, written to prometheus-client together.

Each `inc` and `observe` of prometheus-client takes a lock and, for a histogram, walks its
buckets: about 13 of them per cache miss cost ~5% of the miss's CPU (bench/README.md). Here an
update adds to a plain dict, and the turn's sums go to prometheus-client once, at the end of
the loop turn they happened in (`loop.call_soon`), so a scrape, in this process or another
worker's reading the multiprocess files, sees them as soon as the requests that made them are
answered. A scrape in this process writes what is pending first (`flush`); without a running
loop (a script, a test) an update is written at once.

The histogram's own bucket bounds and values are used (prometheus-client's `_upper_bounds`,
`_buckets`, `_sum`, pinned in tests/test_library_internals.py), and a value lands in the first
bucket whose bound is not below it, as `Histogram.observe` puts it.
"""

from __future__ import annotations

import asyncio
import bisect
from typing import Any


class Tally:
    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}  # counter child -> amount to add
        self._observed: dict[Any, list[float]] = {}  # histogram child -> [sum, count per bucket...]
        self._flush_due = False

    def inc(self, counter: Any, amount: float = 1.0) -> None:
        """`counter.inc(amount)`, at the end of this loop turn."""
        if amount < 0:
            raise ValueError(f"counters only go up: {amount!r}")  # as prometheus-client says it
        self._counts[counter] = self._counts.get(counter, 0.0) + amount
        if not self._flush_due:
            self._flush_soon()

    def observe(self, histogram: Any, amount: float) -> None:
        """`histogram.observe(amount)`, at the end of this loop turn."""
        pending = self._observed.get(histogram)
        if pending is None:
            pending = self._observed[histogram] = [0.0] * (len(histogram._upper_bounds) + 1)
        pending[0] += amount
        pending[1 + bisect.bisect_left(histogram._upper_bounds, amount)] += 1
        if not self._flush_due:
            self._flush_soon()

    def flush(self) -> None:
        """Write every pending update to prometheus-client now."""
        self._flush_due = False
        counts, self._counts = self._counts, {}
        for counter, amount in counts.items():
            counter.inc(amount)
        observed, self._observed = self._observed, {}
        for histogram, pending in observed.items():
            histogram._sum.inc(pending[0])
            for bucket, count in zip(histogram._buckets, pending[1:]):
                if count:
                    bucket.inc(count)

    def _flush_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # no loop turn to end: now
            return
        self._flush_due = True
        loop.call_soon(self.flush)
