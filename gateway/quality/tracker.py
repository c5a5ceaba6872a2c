"""Rolling agreement of one provider with its model's reference, from canaries and shadow samples.

Each sample is one query's pairs scored by both. Only a summary per sample is kept (pairs, sum
of |differences|, tau), the last `max_samples` of them, so memory is fixed however long the
gateway runs and old evidence ages out as providers change. MAE is pooled over pairs; tau is
the pair-weighted mean of the samples' taus, since ranks only compare within one query.

The scores themselves are kept too, the last `max_pairs` distinct (reference, other) pairs, to
fit the map from the provider's scale onto the reference's (gateway.quality.calibration).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.quality.agreement import Agreement, agreement
from gateway.quality.calibration import MIN_PAIRS, Calibration, calibrate


@dataclass(frozen=True, slots=True)
class _Sample:
    pairs: int
    absolute_difference_sum: float
    kendall_tau: float | None


class AgreementTracker:
    def __init__(self, max_samples: int = 256, min_pairs: int = 10, max_pairs: int = 1024) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples}")
        if min_pairs < 1:
            raise ValueError(f"min_pairs must be at least 1, got {min_pairs}")
        self._samples: deque[_Sample] = deque(maxlen=max_samples)
        self._min_pairs = min_pairs
        # Insertion-ordered and distinct: a canary scored alike every round adds its pairs once.
        self._pairs: dict[tuple[float, float], None] = {}
        self._max_pairs = max_pairs
        # The router asks on every request; samples arrive a few times a minute at most.
        self._current: Agreement | None = None
        self._calibration: Calibration | None = None
        self._unfitted = 0  # distinct pairs added since the last fit
        self._stale = False

    def add(self, reference: Sequence[float], other: Sequence[float]) -> None:
        """One query's pairs, scored by the reference and by the tracked provider, in one order."""
        if not reference:
            return  # nothing was compared; an empty sample would only push out real ones
        measured = agreement(reference, other)
        self._samples.append(_Sample(measured.pairs, measured.mae * measured.pairs, measured.kendall_tau))
        self._stale = True
        self.add_pairs(reference, other)

    def add_pairs(self, reference: Sequence[float], other: Sequence[float]) -> None:
        """Score pairs for the calibration alone: the agreement figures come as samples (`append`),
        measured by whichever worker scored them, while each worker fits its map on the pairs it saw."""
        for pair in zip(reference, other):
            if pair in self._pairs:
                del self._pairs[pair]  # seen again: now among the newest, and nothing new to fit
            else:
                self._unfitted += 1
            self._pairs[pair] = None
        while len(self._pairs) > self._max_pairs:
            del self._pairs[next(iter(self._pairs))]

    def export(self) -> list[tuple[int, float, float | None]]:
        """The samples kept, oldest first, as `append` and `replace` take them."""
        return [(s.pairs, s.absolute_difference_sum, s.kendall_tau) for s in self._samples]

    def append(self, sample: tuple[int, float, float | None]) -> None:
        """One sample another tracker measured (see `export`)."""
        if sample[0] > 0:
            self._samples.append(_Sample(*sample))
            self._stale = True

    def replace(self, samples: Sequence[tuple[int, float, float | None]]) -> None:
        """Keep exactly these samples (the last `max_samples`): the fleet's, read from Redis."""
        self._samples.clear()
        self._samples.extend(_Sample(*sample) for sample in samples if sample[0] > 0)
        self._stale = True

    def current(self) -> Agreement | None:
        """Agreement over the samples kept, or None while fewer than `min_pairs` pairs were seen."""
        if self._stale:
            self._current = self._measure()
            self._stale = False
        return self._current

    def calibration(self) -> Calibration | None:
        """The map from the tracked provider's scores onto the reference's, or None (too few
        pairs, or no increasing relation between them).

        Fitted again only once a tenth of the pairs is new (at least MIN_PAIRS): a fit of 1,024
        pairs takes a few milliseconds, and shadow traffic adds pairs with every sampled request.
        """
        if self._unfitted >= max(MIN_PAIRS, len(self._pairs) // 10):
            pairs = list(self._pairs)
            self._calibration = calibrate([o for _, o in pairs], [r for r, _ in pairs])
            self._unfitted = 0
        return self._calibration

    def _measure(self) -> Agreement | None:
        pairs = sum(sample.pairs for sample in self._samples)
        if pairs < self._min_pairs:
            return None
        mae = math.fsum(sample.absolute_difference_sum for sample in self._samples) / pairs
        return Agreement(mae, self._pooled_tau(), pairs)

    def within(self, tolerance: float) -> bool:
        """Whether scores may be shared: known, and MAE at most `tolerance`. Unknown is not within."""
        measured = self.current()
        return measured is not None and measured.within(tolerance)

    def clear(self) -> None:
        """Forget every sample, e.g. when the provider's config changed."""
        self._samples.clear()
        self._pairs.clear()
        self._calibration, self._unfitted = None, 0
        self._stale = True

    def _pooled_tau(self) -> float | None:
        weighted = [(s.pairs, s.kendall_tau) for s in self._samples if s.kendall_tau is not None]
        weight = sum(pairs for pairs, _ in weighted)
        if weight == 0:
            return None
        return math.fsum(pairs * tau for pairs, tau in weighted) / weight
