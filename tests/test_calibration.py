"""The monotone map onto the reference's scale, without I/O."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings, strategies as st

from gateway.quality.calibration import MIN_PAIRS, calibrate, fit_map
from gateway.quality.tracker import AgreementTracker


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


REFERENCE = [sigmoid(-4 + 8 * i / 79) for i in range(80)]


def test_another_scale_maps_back_onto_the_reference() -> None:
    cubed = [p**3 for p in REFERENCE]  # the emulator's `rescale`
    calibration = calibrate(cubed, REFERENCE)
    assert calibration is not None and calibration.pairs == 80
    assert calibration.mae_before > 0.1 and calibration.mae_after < 0.005
    fresh = [sigmoid(x) ** 3 for x in (-3.3, -0.2, 0.7, 2.9)]
    assert calibration.apply(fresh) == pytest.approx([sigmoid(x) for x in (-3.3, -0.2, 0.7, 2.9)], abs=0.005)


def test_raw_logits_map_onto_probabilities() -> None:
    logits = [math.log(p / (1 - p)) for p in REFERENCE]  # outside (0, 1): fitted as they are
    calibration = calibrate(logits, REFERENCE)
    assert calibration is not None and calibration.mae_after < 0.01
    assert calibration.map(0.0) == pytest.approx(0.5, abs=0.01)


def test_beyond_the_fitted_range_the_map_still_keeps_the_order() -> None:
    calibration = calibrate([p**3 for p in REFERENCE], REFERENCE)
    assert calibration is not None
    extremes = [1e-9, 1e-6, 1e-4, 0.9999, 0.999999, 1.0, 0.0]
    mapped = calibration.apply(extremes)
    assert all(0.0 < m < 1.0 for m in mapped[:-2])  # on the logit: never out of (0, 1)
    assert mapped[:6] == sorted(mapped[:6]) and len(set(mapped[:6])) == 6


def test_scores_unrelated_to_the_reference_are_not_brought_close() -> None:
    rng = random.Random(3)
    noise = [rng.random() for _ in REFERENCE]
    calibration = calibrate(noise, REFERENCE)
    assert calibration is None or calibration.mae_after > 0.1  # out of sample: no credit for fitting noise


def test_an_order_opposite_to_the_reference_has_no_map() -> None:
    assert calibrate(REFERENCE[::-1], REFERENCE) is None  # every pair pooled into one block


def test_too_few_pairs_have_no_map() -> None:
    assert calibrate(REFERENCE[: MIN_PAIRS - 1], REFERENCE[: MIN_PAIRS - 1]) is None
    with pytest.raises(ValueError, match="different lengths"):
        calibrate(REFERENCE, REFERENCE[:-1])


def test_ties_and_violations_pool_into_one_increasing_map() -> None:
    scores = [0.1, 0.2, 0.2, 0.3, 0.4]
    reference = [0.1, 0.5, 0.3, 0.2, 0.6]  # 0.5 then 0.2: a violation, pooled
    fitted = fit_map(scores, reference, on_logit=False)
    assert fitted is not None
    assert fitted.knots_x == pytest.approx((0.1, (0.2 + 0.2 + 0.3) / 3, 0.4))
    assert fitted.knots_y == pytest.approx((0.1, (0.5 + 0.3 + 0.2) / 3, 0.6))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.001, 0.999), st.floats(0.001, 0.999)), min_size=MIN_PAIRS, max_size=40))
def test_a_fitted_map_is_strictly_increasing(pairs: list[tuple[float, float]]) -> None:
    scores, reference = [s for s, _ in pairs], [r for _, r in pairs]
    fitted = fit_map(scores, reference, on_logit=True)
    if fitted is None:
        return
    probes = sorted({*scores, 0.0005, 0.9995})
    mapped = [fitted(p) for p in probes]
    assert all(a <= b for a, b in itertools.pairwise(mapped))
    # Strictly, wherever floats can tell the scores apart by more than rounding.
    assert all(a < b for a, b, x, y in zip(mapped, mapped[1:], probes, probes[1:]) if y - x > 1e-9)


def test_the_tracker_fits_from_distinct_pairs_and_forgets_them_on_clear() -> None:
    tracker = AgreementTracker(max_pairs=50)
    for _ in range(3):  # a canary scored alike in every round counts its pairs once
        tracker.add(REFERENCE[:30], [p**3 for p in REFERENCE[:30]])
    calibration = tracker.calibration()
    assert calibration is not None and calibration.pairs == 30
    tracker.add(REFERENCE[30:], [p**3 for p in REFERENCE[30:]])
    calibration = tracker.calibration()
    assert calibration is not None and calibration.pairs == 50  # the newest 50 kept
    tracker.clear()
    assert tracker.calibration() is None and tracker.current() is None


def test_the_tracker_fits_again_only_once_a_tenth_of_its_pairs_is_new() -> None:
    tracker = AgreementTracker(max_pairs=400)
    grid = [0.01 + 0.98 * i / 599 for i in range(600)]
    tracker.add(grid[:400], [p**3 for p in grid[:400]])
    first = tracker.calibration()
    assert first is not None and first.pairs == 400
    tracker.add(grid[400:430], [p**3 for p in grid[400:430]])  # 30 new: under a tenth (40)
    assert tracker.calibration() is first
    tracker.add(grid[430:450], [p**3 for p in grid[430:450]])  # 50 new in all
    again = tracker.calibration()
    assert again is not first and again is not None and again.pairs == 400


def test_calibration_and_agreement_are_per_language_where_there_are_enough_pairs() -> None:
    """A provider on another scale in English (other = reference / 2) and on yet another in
    Russian (other = reference / 4): the map fitted on each language's pairs maps that language's
    scores, the pooled one fits neither well; a language with too few pairs gets the pooled map."""
    rng = random.Random(7)
    tracker = AgreementTracker()
    for language, factor in (("en", 0.5), ("ru", 0.25)):
        for _ in range(4):
            reference = [rng.uniform(0.05, 0.95) for _ in range(10)]
            tracker.add(reference, [r * factor for r in reference], language)
    tracker.add([0.2, 0.8], [0.1, 0.4], "zh")  # two pairs: too few to fit on
    english, russian, pooled = tracker.calibration("en"), tracker.calibration("ru"), tracker.calibration()
    assert english is not None and russian is not None and pooled is not None
    assert english.apply([0.25])[0] == pytest.approx(0.5, abs=0.05)
    assert russian.apply([0.125])[0] == pytest.approx(0.5, abs=0.05)
    assert english.mae_after < pooled.mae_after and russian.mae_after < pooled.mae_after
    assert tracker.calibration("zh") is pooled
    # Agreement figures per language, each over its own samples; the pooled ones over all.
    measured_en, measured_ru, measured_all = tracker.current("en"), tracker.current("ru"), tracker.current()
    assert measured_en is not None and measured_ru is not None and measured_all is not None
    assert (measured_en.pairs, measured_ru.pairs, measured_all.pairs) == (40, 40, 82)
    assert tracker.current("zh") is None  # two pairs: not measured yet


def test_one_languages_samples_never_push_out_anothers() -> None:
    tracker = AgreementTracker(max_samples=4)
    tracker.add([0.1, 0.9] * 5, [0.1, 0.9] * 5, "ru")
    for _ in range(10):
        tracker.add([0.2, 0.8] * 5, [0.3, 0.7] * 5, "en")
    measured = tracker.current("ru")
    assert measured is not None and measured.mae == 0.0
    exported = tracker.export()
    languages = [sample[-1] for sample in exported]
    assert languages.count("en") == 4 and languages.count("ru") == 1
    copy = AgreementTracker(max_samples=4)
    copy.replace([*exported, (10, 1.0, 0.5)])  # a sample from a worker before languages: pooled only
    pooled = copy.current()
    assert copy.current("ru") == measured and pooled is not None and pooled.pairs == 60
