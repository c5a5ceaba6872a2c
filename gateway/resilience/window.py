"""Counts of events over a sliding time window, in fixed buckets so memory never grows with traffic.

The window is `buckets` slices of `window_seconds / buckets`; totals cover the current slice and
the ones before it, so an event is forgotten between (buckets - 1) / buckets of a window and a
whole window after it happened. Ten buckets keep that blur at a tenth of the window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Clock = Callable[[], float]  # monotonic seconds


class SlidingCounts:
    def __init__(self, names: Sequence[str], window_seconds: float, clock: Clock, buckets: int = 10) -> None:
        if not window_seconds > 0 or not math.isfinite(window_seconds):
            raise ValueError(f"window_seconds must be a positive number, got {window_seconds!r}")
        if buckets < 1:
            raise ValueError(f"buckets must be at least 1, got {buckets!r}")
        self._index = {name: i for i, name in enumerate(names)}
        self._bucket_seconds = window_seconds / buckets
        self._clock = clock
        # Slot i holds the counts of the bucket whose number is congruent to i; `_epochs[i]`
        # says which bucket that is, so a stale slot is recognised and reset instead of read.
        self._epochs: list[int | None] = [None] * buckets
        self._counts = [[0] * len(self._index) for _ in range(buckets)]

    def add(self, name: str, amount: int = 1) -> None:
        epoch = self._current_epoch()
        slot = epoch % len(self._epochs)
        if self._epochs[slot] != epoch:
            self._epochs[slot] = epoch
            self._counts[slot] = [0] * len(self._index)
        self._counts[slot][self._index[name]] += amount

    def total(self, name: str) -> int:
        column = self._index[name]
        oldest = self._current_epoch() - len(self._epochs) + 1
        return sum(
            counts[column]
            for epoch, counts in zip(self._epochs, self._counts)
            if epoch is not None and epoch >= oldest
        )

    def clear(self) -> None:
        self._epochs = [None] * len(self._epochs)

    def _current_epoch(self) -> int:
        return math.floor(self._clock() / self._bucket_seconds)
