"""What the gateway has learned of each provider's quality, per model; kept across reloads.

    state       "passing" / "failing" its canary, or "unknown" (not probed yet, or the probe
                could not run: no key, breaker open, budget, an error)
    agreement   rolling agreement with the model's reference (canary rounds and shadow samples)

Which provider is the reference and which providers may share its cached scores follows from
these and from the config's fallback order (`reference`, `shares_with_reference`); the board
itself only remembers. An entry is forgotten when its provider's config changes (another URL,
model or kind is another provider as far as quality goes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.quality.probe import CanaryOutcome
from gateway.quality.tracker import AgreementTracker

QualityState = Literal["unknown", "passing", "failing"]


@dataclass(slots=True)
class ProviderQuality:
    state: QualityState = "unknown"
    reason: str = "not probed yet"
    probed_at: float | None = None  # wall-clock time of the last verdict
    canary: CanaryOutcome | None = None  # the last verdict's scores, to compare with the reference's
    agreement: AgreementTracker = field(default_factory=AgreementTracker)
    fingerprint: object = None  # the provider config the evidence is about


@dataclass(frozen=True, slots=True)
class QualityReport:
    """One provider's quality as /readyz and /status show it."""

    state: QualityState
    reason: str
    reference: bool  # the model's reference: the first provider in fallback that passes
    shares_cache: bool  # its fresh scores are ranked beside the reference's cached ones
    mae: float | None  # agreement with the reference; None until measured
    kendall_tau: float | None
    # the last verdict graded: rule, ordered pairs, worst margin, per language (Verdict.as_json)
    canary: Mapping[str, object] | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "state": self.state, "reason": self.reason, "reference": self.reference,
            "shares_cache": self.shares_cache, "mae": self.mae, "kendall_tau": self.kendall_tau,
            "canary": self.canary,
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
        self._entries: dict[tuple[str, str], ProviderQuality] = {}
        self._references: dict[str, str | None] = {}

    def entry(self, model: str, provider: str, fingerprint: object = None) -> ProviderQuality:
        """The provider's entry; a fresh one when `fingerprint` says its config changed."""
        key = (model, provider)
        found = self._entries.get(key)
        if found is None or (fingerprint is not None and found.fingerprint not in (None, fingerprint)):
            found = self._entries[key] = ProviderQuality(fingerprint=fingerprint)
        elif found.fingerprint is None:
            found.fingerprint = fingerprint
        return found

    def record_verdict(self, model: str, provider: str, outcome: CanaryOutcome) -> Transition | None:
        entry = self.entry(model, provider)
        before = entry.state
        entry.state = "passing" if outcome.verdict.passed else "failing"
        entry.reason = outcome.verdict.reason()
        entry.probed_at = time.time()
        entry.canary = outcome
        if (before == "failing") != (entry.state == "failing"):
            if before == "unknown" and entry.state == "passing":
                return None  # a first pass is news to nobody
            return Transition(model, provider, entry.state, entry.reason)
        return None

    def record_unprobed(self, model: str, provider: str, reason: str) -> None:
        """The probe could not run; what was known stays, with the reason it was not renewed."""
        entry = self.entry(model, provider)
        entry.reason = reason if entry.state == "unknown" else f"{entry.reason} (last probe could not run: {reason})"

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

    def shares_with_reference(self, model: str, provider: str, reference: str | None, tolerance: float) -> bool:
        """May this provider's fresh scores be ranked beside the reference's cached ones?"""
        if provider == reference:
            return True
        entry = self.entry(model, provider)
        return reference is not None and entry.state != "failing" and entry.agreement.within(tolerance)

    def note_reference(self, model: str, reference: str | None) -> bool:
        """Remember the model's reference; True when it changed. Agreement was measured against
        the one before, so every provider's figures start over."""
        if self._references.get(model) == reference:
            return False
        self._references[model] = reference
        for (entry_model, _), entry in self._entries.items():
            if entry_model == model:
                entry.agreement.clear()
        return True
