"""How far two providers' scores for the same pairs agree: in value (MAE) and in order (tau-b).

Mean absolute difference is what matters for sharing cached scores: ranking one provider's
fresh score against another's cached one compares values. Kendall's tau-b says whether the
order agrees at all, and tells "another scale" (tau near 1, MAE large) from "another model or
template" (tau well below 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Agreement:
    mae: float  # mean |score difference| over the pairs
    kendall_tau: float | None  # None when undefined: fewer than two pairs, or one side all ties
    pairs: int

    def within(self, tolerance: float) -> bool:
        return self.mae <= tolerance


def agreement(reference: Sequence[float], other: Sequence[float]) -> Agreement:
    return Agreement(mean_absolute_difference(reference, other), kendall_tau_b(reference, other),
                     len(reference))


def mean_absolute_difference(a: Sequence[float], b: Sequence[float]) -> float:
    _check_paired(a, b)
    if not a:
        raise ValueError("no pairs to compare")
    return math.fsum(abs(x - y) for x, y in zip(a, b)) / len(a)


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b in O(n log n) (Knight, 1966): ties in either list count for neither side.

    Sorting by (x, y) puts every pair tied in x in y order, so the inversions left in y are
    exactly the discordant pairs; concordant ones are what remains once ties are taken out.
    """
    _check_paired(x, y)
    n = len(x)
    all_pairs = n * (n - 1) // 2
    ordered = sorted(zip(x, y))
    tied_x = _tied_pairs(a for a, _ in ordered)
    tied_xy = _tied_pairs(ordered)
    ys = [b for _, b in ordered]
    discordant = _count_inversions(ys)
    tied_y = _tied_pairs(sorted(ys))  # _count_inversions sorted ys in place; sorted() is cheap then
    denominator = math.sqrt((all_pairs - tied_x) * (all_pairs - tied_y))
    if denominator == 0:
        return None
    concordant_minus_discordant = all_pairs - tied_x - tied_y + tied_xy - 2 * discordant
    return concordant_minus_discordant / denominator


def _check_paired(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"score lists of different lengths: {len(a)} and {len(b)}")


def _tied_pairs(values: Iterable[object]) -> int:
    """Pairs of equal neighbours in a sorted iterable: sum of t(t-1)/2 over runs of length t."""
    total, run, previous = 0, 0, object()
    for value in values:
        run = run + 1 if value == previous else 1
        total += run - 1  # the new element ties with each earlier one in its run
        previous = value
    return total


def _count_inversions(values: list[float]) -> int:
    """Pairs i < j with values[i] > values[j]; sorts `values` in place (bottom-up merge sort)."""
    inversions, width, n = 0, 1, len(values)
    buffer = values[:]
    while width < n:
        for start in range(0, n, 2 * width):
            middle, end = min(start + width, n), min(start + 2 * width, n)
            inversions += _merge(values, buffer, start, middle, end)
        values[:] = buffer
        width *= 2
    return inversions


def _merge(source: list[float], target: list[float], start: int, middle: int, end: int) -> int:
    inversions, left, right = 0, start, middle
    for position in range(start, end):
        # Strictly greater only: equal values are ties, not inversions.
        if right < end and (left >= middle or source[left] > source[right]):
            target[position] = source[right]
            inversions += middle - left  # every left element still waiting is greater
            right += 1
        else:
            target[position] = source[left]
            left += 1
    return inversions
