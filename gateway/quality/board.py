"""What the gateway has learned of each provider's quality, per model; kept across reloads.

    state       "passing" / "failing" its canary, or "unknown" (not probed yet, or the probe
                could not run: no key, breaker open, budget, an error)
    languages   the same per language of the canary, each with its own standing: a provider
                may pass English and rank Chinese like noise (LanguageQuality)
    agreement   rolling agreement with the model's reference (canary rounds and shadow samples)

Which provider is the reference and which providers may share its cached scores follows from
these and from the config's fallback order (`reference`; gateway.quality.groups); the board
itself only remembers. Entries are kept per scoring identity (the provider's fingerprint: URL,
upstream model, kind, path, score transform), not per name: a provider renamed in the config
keeps what was learned of it, one re-pointed elsewhere starts afresh.

`version` counts the board's changes: every plan table (gateway.scoring.table) was built from
one version and is built again once the board has moved on. So an entry is changed only
through the board's methods (record_verdict, record_unprobed, note_reference, the agreement
ones), never in place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.quality.calibration import Calibration
from gateway.quality.probe import CanaryOutcome
from gateway.quality.standing import CanaryStanding, in_one_language, standing
from gateway.quality.tracker import AgreementTracker, SampleRow

QualityState = Literal["unknown", "passing", "failing"]


@dataclass(frozen=True, slots=True)
class LanguageQuality:
    """A provider's verdict on the canary lines of one language."""

    state: QualityState  # "passing" or "failing"
    standing: CanaryStanding | None  # failing: against chance and BM25 on this language's lines


@dataclass(slots=True)
class ProviderQuality:
    state: QualityState = "unknown"
    reason: str = "not probed yet"
    probed_at: float | None = None  # wall-clock time of the last verdict
    checked_at: float | None = None  # wall-clock time of the last probe, whether or not it could run
    canary: CanaryOutcome | None = None  # the last verdict's scores, to compare with the reference's
    standing: CanaryStanding | None = None  # the last verdict against chance and BM25
    agreement: AgreementTracker = field(default_factory=AgreementTracker)
    fingerprint: object = None  # the provider config the evidence is about
    languages: dict[str, LanguageQuality] = field(default_factory=dict)  # per language of the last verdict
    # Wall-clock times of its first passing verdict and of its last failing one: the scores it
    # wrote before a first pass are kept, those of a provider that failed since never read
    # (gateway.quality.groups, `sibling`).
    first_passed_at: float | None = None
    failed_at: float | None = None

    def verdict_in(self, language: str | None) -> tuple[QualityState, CanaryStanding | None]:
        """The state and standing in `language`; the overall ones where the canary has no line of it
        (or no language was asked)."""
        found = None if language is None else self.languages.get(language)
        if found is None:
            return self.state, self.standing
        return found.state, found.standing


@dataclass(frozen=True, slots=True)
class QualityReport:
    """One provider's quality as /readyz and /status show it."""

    state: QualityState
    reason: str
    reference: bool  # the model's reference: the first provider in fallback that passes
    shares_cache: bool  # its fresh scores are ranked beside the reference's cached ones
    mae: float | None  # agreement with the reference; None until measured
    kendall_tau: float | None
    group: str  # the cache group its fresh scores are written to
    calibrated: bool = False  # shares the reference's cache through the map onto its scale
    calibration: Calibration | None = None  # the map's figures, whether or not they allow sharing
    serves: bool = True  # failing, it still serves (flagged) when nothing better can answer
    standing: str | None = None  # a failing provider against chance and BM25 (CanaryStanding.describe)
    # the last verdict graded: rule, ordered pairs, worst margin, per language (Verdict.as_json)
    canary: Mapping[str, object] | None = None
    # per language of the canary: its state, whether it serves there, its standing where failing
    languages: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {
            "state": self.state, "reason": self.reason, "reference": self.reference,
            "shares_cache": self.shares_cache, "mae": self.mae, "kendall_tau": self.kendall_tau,
            "group": self.group, "calibrated": self.calibrated,
            "calibration": None if self.calibration is None else self.calibration.as_json(),
            "serves": self.serves, "standing": self.standing,
            "canary": self.canary, "languages": self.languages,
        }


@dataclass(frozen=True, slots=True)
class Transition:
    """A provider that started or stopped failing its canary: worth one warning line."""

    model: str
    provider: str
    state: QualityState
    reason: str


class QualityBoard:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, object], ProviderQuality] = {}
        self._identities: dict[tuple[str, str], object] = {}  # (model, provider name) -> fingerprint
        self._references: dict[str, object] = {}  # model -> the reference's identity
        self.version = 0  # bumped by every change: what a plan table was built from

    def _changed(self) -> None:
        self.version += 1

    def entry(self, model: str, provider: str, fingerprint: object = None) -> ProviderQuality:
        """The provider's entry; with `fingerprint`, the entry of that scoring identity from now on
        (a fresh one when nothing is known of it)."""
        if fingerprint is not None:
            self._identities[(model, provider)] = fingerprint
        key = (model, self._identities.get((model, provider), provider))
        found = self._entries.get(key)
        if found is None:
            found = self._entries[key] = ProviderQuality(fingerprint=fingerprint)
            self._changed()
        return found

    def _identity(self, model: str, provider: str) -> object:
        return self._identities.get((model, provider), provider)

    def record_verdict(
        self, model: str, provider: str, outcome: CanaryOutcome, at: float | None = None
    ) -> Transition | None:
        """A verdict probed at `at` (now by default; another worker's time when it probed)."""
        entry = self.entry(model, provider)
        before = entry.state
        entry.state = "passing" if outcome.verdict.passed else "failing"
        entry.reason = outcome.verdict.reason()
        entry.probed_at = entry.checked_at = time.time() if at is None else at
        if entry.state == "failing":
            entry.failed_at = entry.probed_at
        elif entry.first_passed_at is None:
            entry.first_passed_at = entry.probed_at
        entry.canary = outcome
        entry.standing = None if outcome.verdict.passed else standing(outcome.lines, outcome.scores)
        entry.languages = languages_of(outcome)
        self._changed()
        if (before == "failing") != (entry.state == "failing"):
            if before == "unknown" and entry.state == "passing":
                return None  # a first pass is news to nobody
            return Transition(model, provider, entry.state, entry.reason)
        return None

    def record_unprobed(self, model: str, provider: str, reason: str, at: float | None = None) -> None:
        """The probe could not run; what was known stays, with the reason it was not renewed."""
        entry = self.entry(model, provider)
        entry.checked_at = time.time() if at is None else at
        known = entry.reason.partition(" (last probe could not run: ")[0]
        entry.reason = reason if entry.state == "unknown" else f"{known} (last probe could not run: {reason})"
        self._changed()

    def add_agreement(self, model: str, provider: str, reference: Sequence[float], other: Sequence[float],
                      language: str | None = None) -> None:
        """One query's pairs scored by the reference and by this provider: a sample, and pairs for calibration."""
        self.entry(model, provider).agreement.add(reference, other, language)
        self._changed()

    def forget_agreement(self, model: str, provider: str) -> None:
        self.entry(model, provider).agreement.clear()
        self._changed()

    def add_agreement_pairs(self, model: str, provider: str, reference: Sequence[float], other: Sequence[float],
                            language: str | None = None) -> None:
        """Scores of the same pairs by the reference and by this provider, of queries in `language` (for calibration)."""
        self.entry(model, provider).agreement.add_pairs(reference, other, language)
        self._changed()

    def append_agreement(self, model: str, provider: str, samples: Sequence[SampleRow]) -> None:
        """Agreement samples measured elsewhere (this worker's other calls, or the fleet's)."""
        tracker = self.entry(model, provider).agreement
        for sample in samples:
            tracker.append(sample)
        self._changed()

    def replace_agreement(self, model: str, provider: str, samples: Sequence[SampleRow]) -> None:
        """The provider's agreement samples, as the fleet measured them, in place of this worker's."""
        self.entry(model, provider).agreement.replace(samples)
        self._changed()

    def reference(self, model: str, fallback: Sequence[str], plannable: Callable[[str], bool]) -> str | None:
        """The first provider in `fallback` that passes its canary; before any verdict, the first
        one that could be called and is not known to fail (so a fresh gateway caches as before)."""
        candidates = [provider for provider in fallback if plannable(provider)]
        for provider in candidates:
            if self.entry(model, provider).state == "passing":
                return provider
        for provider in candidates:
            if self.entry(model, provider).state == "unknown":
                return provider
        return None

    def note_reference(self, model: str, reference: str | None) -> bool:
        """Remember the model's reference; True when it changed (another scoring identity, not
        another name). Agreement was measured against the one before, so every provider's figures
        start over, from its last canary scores beside the new reference's."""
        identity = None if reference is None else self._identity(model, reference)
        if model in self._references and self._references[model] == identity:
            return False
        self._references[model] = identity
        self._changed()
        anchor = None if identity is None else self._entries.get((model, identity))
        for (entry_model, entry_identity), entry in self._entries.items():
            if entry_model != model:
                continue
            entry.agreement.clear()
            if anchor is not None and entry_identity != identity:
                _refeed(entry, anchor.canary)
        return True


def languages_of(outcome: CanaryOutcome) -> dict[str, LanguageQuality]:
    """Each language's verdict, and the standing of each failing one on its own lines: a noise
    test pooled over languages calls a model that ranks English well and Chinese at random noise."""
    verdict = outcome.verdict
    pooled: CanaryStanding | None = None
    found = {}
    for language in verdict.languages:
        if language.passes(verdict.pass_share):
            found[language.language] = LanguageQuality("passing", None)
            continue
        pooled = pooled or standing(outcome.lines, outcome.scores)
        members = [i for i, line in enumerate(outcome.lines) if line.language == language.language]
        lines = [outcome.lines[i] for i in members]
        alone = standing(lines, [outcome.scores[i] for i in members])
        found[language.language] = LanguageQuality("failing", in_one_language(alone, pooled))
    return found


def _refeed(entry: ProviderQuality, reference: CanaryOutcome | None) -> None:
    """The entry's last canary scores against the reference's, when both ran the same set."""
    if entry.canary is not None and reference is not None and entry.canary.lines == reference.lines:
        entry.canary.feed(entry.agreement, reference)
