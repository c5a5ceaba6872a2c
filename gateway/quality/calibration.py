"""A monotone map from one provider's scores onto the reference's scale, fitted from paired scores.

A provider that ranks like the reference on another scale (raw logits vs probabilities, another
calibration layer, the emulator's `rescale`) keeps the reference's order; mapped onto the
reference's scale its fresh scores may be ranked beside the reference's cached ones.

The fit is isotonic regression (pool adjacent violators) and the map interpolates linearly
between the pooled blocks, so it is strictly increasing: a fitted map never ties two scores the
provider told apart, and the provider's own order survives it. Scores strictly inside (0, 1) on
both sides are fitted on the logit, where a rescaled probability is closest to a straight line
and where the map can never leave (0, 1); any other scores are fitted as they are. Past the
fitted range the map continues with the slope from the lowest to the highest block.

`mae_after` is measured out of sample (two folds: fitted on one half, measured on the other), so
a provider whose scores only a fit to their own noise would bring close does not look calibrated.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MIN_PAIRS = 20  # below this a fit says too little to share a cache on
_EDGE = 1e-12


@dataclass(frozen=True, slots=True)
class MonotoneMap:
    """Strictly increasing and piecewise linear through `knots_x`/`knots_y`, in the fit's space."""

    knots_x: tuple[float, ...]
    knots_y: tuple[float, ...]
    tail_slope: float
    on_logit: bool

    def __call__(self, score: float) -> float:
        # A score of exactly 0 or 1 has no logit; its neighbour in floats stands in for it.
        x = _logit(min(max(score, _EDGE), 1.0 - _EDGE)) if self.on_logit else score
        y = self._interpolate(x)
        return _sigmoid(y) if self.on_logit else y

    def _interpolate(self, x: float) -> float:
        xs, ys = self.knots_x, self.knots_y
        if x <= xs[0]:
            return ys[0] - (xs[0] - x) * self.tail_slope
        if x >= xs[-1]:
            return ys[-1] + (x - xs[-1]) * self.tail_slope
        i = bisect_right(xs, x) - 1
        share = (x - xs[i]) / (xs[i + 1] - xs[i])
        return ys[i] + share * (ys[i + 1] - ys[i])


@dataclass(frozen=True, slots=True)
class Calibration:
    """A fitted map and how well it does: MAE with the reference before it and after it."""

    map: MonotoneMap
    pairs: int
    mae_before: float
    mae_after: float  # out of sample

    def apply(self, scores: Sequence[float]) -> list[float]:
        return [self.map(score) for score in scores]

    def as_json(self) -> dict[str, object]:
        return {"pairs": self.pairs, "mae_before": self.mae_before, "mae_after": self.mae_after}


def calibrate(scores: Sequence[float], reference: Sequence[float]) -> Calibration | None:
    """The map from `scores` onto `reference` (the same pairs, in one order); None when no
    strictly increasing map can be fitted: too few pairs, or an order unrelated to the reference's."""
    if len(scores) != len(reference):
        raise ValueError(f"score lists of different lengths: {len(scores)} and {len(reference)}")
    if len(scores) < MIN_PAIRS:
        return None
    on_logit = all(0.0 < s < 1.0 for s in scores) and all(0.0 < r < 1.0 for r in reference)
    fitted = fit_map(scores, reference, on_logit)
    if fitted is None:
        return None
    mae_after = _out_of_sample_mae(scores, reference, on_logit)
    if mae_after is None:
        return None
    mae_before = math.fsum(abs(s - r) for s, r in zip(scores, reference)) / len(scores)
    return Calibration(fitted, len(scores), mae_before, mae_after)


def fit_map(scores: Sequence[float], reference: Sequence[float], on_logit: bool) -> MonotoneMap | None:
    to_space: Callable[[float], float] = _logit if on_logit else float
    xs, ys = _pool_adjacent_violators([to_space(s) for s in scores], [to_space(r) for r in reference])
    if len(xs) < 2:
        return None  # everything pooled into one block: no increasing relation to map by
    tail_slope = (ys[-1] - ys[0]) / (xs[-1] - xs[0])
    return MonotoneMap(tuple(xs), tuple(ys), tail_slope, on_logit)


def _pool_adjacent_violators(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """Isotonic regression of ys on xs: the blocks' mean x and mean y, both strictly increasing.

    Equal xs start in one block (a map cannot send one score to two places), and a block that
    is not strictly above the one before it is pooled with it.
    """
    order = sorted(range(len(xs)), key=xs.__getitem__)
    blocks: list[list[float]] = []  # [sum x, sum y, count, x of the first member]
    for i in order:
        x, y = xs[i], ys[i]
        if blocks and blocks[-1][3] == x:
            block = blocks[-1]
            block[0] += x
            block[1] += y
            block[2] += 1
        else:
            blocks.append([x, y, 1, x])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            last = blocks.pop()
            blocks[-1][0] += last[0]
            blocks[-1][1] += last[1]
            blocks[-1][2] += last[2]
    return [b[0] / b[2] for b in blocks], [b[1] / b[2] for b in blocks]


def _out_of_sample_mae(scores: Sequence[float], reference: Sequence[float], on_logit: bool) -> float | None:
    """Each half's MAE under the map fitted on the other half, pooled over every pair."""
    total, count = 0.0, 0
    for held_out in (0, 1):
        train = [i for i in range(len(scores)) if i % 2 != held_out]
        test = [i for i in range(len(scores)) if i % 2 == held_out]
        fitted = fit_map([scores[i] for i in train], [reference[i] for i in train], on_logit)
        if fitted is None:
            return None
        total += math.fsum(abs(fitted(scores[i]) - reference[i]) for i in test)
        count += len(test)
    return total / count


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
