"""The sharing rule: may a provider's fresh scores be ranked beside the reference's cached ones?

It rests on what the quality guard measured (gateway.quality.agreement, .tracker, .calibration):

    as is        the reference itself (perhaps under another name), or a provider whose scores
                 agree with the reference's as they are: MAE within `agreement_tolerance` and
                 Kendall's tau at least `min_rank_correlation` (where the samples rank anything)
    calibrated   a provider on another scale that ranks alike: once mapped onto the reference's
                 scale (calibrated MAE, out of sample) within the tolerance, and Kendall's tau at
                 least `min_rank_correlation`; its scores are mapped before they are used
    apart        anything else, and always a provider failing its canary or with no reference

Per language (gateway.quality.languages): what was measured on that language's queries decides
for them, the map fitted on them where there are enough; a language nothing was measured in
(no canary line, no shadow sample yet) shares nothing, whatever the other languages showed.

Which group a sharing provider writes to is gateway.quality.groups'.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import QualityConfig
from gateway.quality.board import ProviderQuality, QualityState
from gateway.quality.calibration import Calibration


@dataclass(frozen=True, slots=True)
class Sharing:
    shares: bool
    scale: Calibration | None = None  # set when it shares through the map only


APART = Sharing(False)
AS_IS = Sharing(True)


def agrees_as_is(entry: ProviderQuality, rule: QualityConfig, language: str | None = None) -> bool:
    """Known to agree with the reference as its scores are (the reference's own agreement is
    unmeasured): MAE within the tolerance and, where the samples rank anything, Kendall's tau at
    least `min_rank_correlation`. A small MAE alone is not agreement: a model pruned to English
    scores the built-in canary at MAE 0.035 from e5's (inside 0.05) with tau 0.185, because its
    scores of other languages sit as close to e5's as they are far from its order. With a
    language: measured on that language's queries alone (canary lines, shadow samples)."""
    measured = entry.agreement.current(language)
    if measured is None or not measured.within(rule.agreement_tolerance):
        return False
    return measured.kendall_tau is None or measured.kendall_tau >= rule.min_rank_correlation


def sharing(
    entry: ProviderQuality, state: QualityState, is_reference: bool, rule: QualityConfig, language: str | None = None,
) -> Sharing:
    """How this provider's fresh scores of queries in `language` (None: any) may join the
    reference's cache group, by what was measured in that language. `state`: its verdict there;
    `is_reference`: it is the reference's scoring identity (the reference, perhaps under another name)."""
    if is_reference:
        return AS_IS
    if state == "failing":
        return APART
    if agrees_as_is(entry, rule, language):
        return AS_IS
    measured = entry.agreement.current(language)
    calibration = entry.agreement.calibration(language)
    if (
        measured is not None
        and calibration is not None
        and calibration.mae_after <= rule.agreement_tolerance
        and measured.kendall_tau is not None
        and measured.kendall_tau >= rule.min_rank_correlation
    ):
        return Sharing(True, calibration)
    return APART
