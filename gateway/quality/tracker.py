"""Rolling agreement of one provider with its model's reference, from canaries and shadow samples.

Each sample is one query's pairs scored by both. Only a summary per sample is kept (pairs, sum
of |differences|, tau), the last `max_samples` of them, so memory is fixed however long the
gateway runs and old evidence ages out as providers change. MAE is pooled over pairs; tau is
the pair-weighted mean of the samples' taus, since ranks only compare within one query.

The scores themselves are kept too, the last `max_pairs` distinct (reference, other) pairs, to
fit the map from the provider's scale onto the reference's (gateway.quality.calibration).

Samples and pairs carry the language of their query (gateway.quality.languages), None where it is
not known, and are kept per language, `max_samples` and `max_pairs` each: so the agreement in
Russian is measured on Russian queries alone, and English shadow traffic never pushes out the
canary's Russian lines. The figures without a language pool every language.
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
    language: str | None = None


# As samples travel between workers (export, append, replace): pairs, |difference| sum, tau, language.
SampleRow = tuple[int, float, float | None] | tuple[int, float, float | None, str | None]


class AgreementTracker:
    def __init__(self, max_samples: int = 256, min_pairs: int = 10, max_pairs: int = 1024) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples}")
        if min_pairs < 1:
            raise ValueError(f"min_pairs must be at least 1, got {min_pairs}")
        self._max_samples = max_samples
        self._samples: dict[str | None, deque[_Sample]] = {}  # per language
        self._min_pairs = min_pairs
        # Per language, insertion-ordered and distinct: a canary scored alike every round adds its pairs once.
        self._pairs: dict[str | None, dict[tuple[float, float], None]] = {}
        self._max_pairs = max_pairs
        # The router asks on every request; samples arrive a few times a minute at most.
        self._current: dict[str | None, Agreement | None] = {}
        self._calibrations: dict[str | None, Calibration | None] = {}
        self._unfitted: dict[str | None, int] = {}  # distinct pairs added since the last fit, per language

    def add(self, reference: Sequence[float], other: Sequence[float], language: str | None = None) -> None:
        """One query's pairs, scored by the reference and by the tracked provider, in one order."""
        if not reference:
            return  # nothing was compared; an empty sample would only push out real ones
        measured = agreement(reference, other)
        self.append((measured.pairs, measured.mae * measured.pairs, measured.kendall_tau, language))
        self.add_pairs(reference, other, language)

    def add_pairs(self, reference: Sequence[float], other: Sequence[float], language: str | None = None) -> None:
        """Score pairs for the calibration alone: the agreement figures come as samples (`append`),
        measured by whichever worker scored them, while each worker fits its map on the pairs it saw."""
        pairs = self._pairs.setdefault(language, {})
        unfitted = 0
        for pair in zip(reference, other):
            if pair in pairs:
                del pairs[pair]  # seen again: now among the newest, and nothing new to fit
            else:
                unfitted += 1
            pairs[pair] = None
        while len(pairs) > self._max_pairs:
            del pairs[next(iter(pairs))]
        self._unfitted[language] = self._unfitted.get(language, 0) + unfitted
        if language is not None:
            self._unfitted[None] = self._unfitted.get(None, 0) + unfitted  # the pooled fit's too

    def export(self) -> list[SampleRow]:
        """The samples kept, oldest first within each language, as `append` and `replace` take them."""
        return [(s.pairs, s.absolute_difference_sum, s.kendall_tau, s.language)
                for series in self._samples.values() for s in series]

    def append(self, sample: SampleRow) -> None:
        """One sample another tracker measured (see `export`); one without a language (a worker
        before languages were told) counts in the pooled figures alone."""
        if sample[0] > 0:
            found = _Sample(*sample)
            series = self._samples.get(found.language)
            if series is None:
                series = self._samples[found.language] = deque(maxlen=self._max_samples)
            series.append(found)
            self._current.clear()

    def replace(self, samples: Sequence[SampleRow]) -> None:
        """Keep exactly these samples (the last `max_samples` of each language): the fleet's, read from Redis."""
        self._samples.clear()
        self._current.clear()
        for sample in samples:
            self.append(sample)

    def current(self, language: str | None = None) -> Agreement | None:
        """Agreement over the samples kept (of `language`; None: of every language), or None while
        fewer than `min_pairs` pairs were seen there."""
        if language not in self._current:
            self._current[language] = self._measure(language)
        return self._current[language]

    def calibration(self, language: str | None = None) -> Calibration | None:
        """The map from the tracked provider's scores onto the reference's, or None (too few
        pairs, or no increasing relation between them). With a language: fitted on that
        language's pairs where there are at least MIN_PAIRS of them, else the pooled map.

        Fitted again only once a tenth of the pairs is new (at least MIN_PAIRS): a fit of 1,024
        pairs takes a few milliseconds, and shadow traffic adds pairs with every sampled request.
        """
        if language is not None and len(self._pairs.get(language, ())) < MIN_PAIRS:
            language = None
        pairs = self._pairs_of(language)
        if self._unfitted.get(language, 0) >= max(MIN_PAIRS, len(pairs) // 10):
            self._calibrations[language] = calibrate([o for _, o in pairs], [r for r, _ in pairs])
            self._unfitted[language] = 0
        return self._calibrations.get(language)

    def _pairs_of(self, language: str | None) -> list[tuple[float, float]]:
        if language is not None:
            return list(self._pairs.get(language, ()))
        return [pair for pairs in self._pairs.values() for pair in pairs]

    def _series(self, language: str | None) -> list[_Sample]:
        if language is not None:
            return list(self._samples.get(language, ()))
        return [sample for series in self._samples.values() for sample in series]

    def _measure(self, language: str | None) -> Agreement | None:
        samples = self._series(language)
        pairs = sum(sample.pairs for sample in samples)
        if pairs < self._min_pairs:
            return None
        mae = math.fsum(sample.absolute_difference_sum for sample in samples) / pairs
        return Agreement(mae, _pooled_tau(samples), pairs)

    def within(self, tolerance: float) -> bool:
        """Whether scores may be shared: known, and MAE at most `tolerance`. Unknown is not within."""
        measured = self.current()
        return measured is not None and measured.within(tolerance)

    def clear(self) -> None:
        """Forget every sample, e.g. when the provider's config changed."""
        self._samples.clear()
        self._pairs.clear()
        self._calibrations.clear()
        self._unfitted.clear()
        self._current.clear()


def _pooled_tau(samples: Sequence[_Sample]) -> float | None:
    weighted = [(s.pairs, s.kendall_tau) for s in samples if s.kendall_tau is not None]
    weight = sum(pairs for pairs, _ in weighted)
    if weight == 0:
        return None
    return math.fsum(pairs * tau for pairs, tau in weighted) / weight
