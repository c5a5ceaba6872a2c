"""Cache groups: where a provider's scores of a model are cached, and onto which scale they are mapped.

A group is named by what scores, never by a provider's name or place in `fallback`:

    MODEL@IDENTITY[?|!]

IDENTITY is 12 hex digits of a digest of the scoring identity (kind, base URL, upstream model,
path, score transform): renaming a provider changes nothing, re-pointing it (another URL or
model) starts a new group. The mark says under which verdict the scores were written: none
while the provider passes its canary, `?` before its first verdict (or with probes off), `!`
while it fails. So scores written before a verdict, or while failing, are never read once a
verdict says otherwise, in either direction.

Providers that agree with the model's reference share one group: the reference, and every
provider whose scores agree with the reference's as they are (MAE within `agreement_tolerance`)
or once mapped onto its scale (gateway.quality.calibration: calibrated MAE within the tolerance
and Kendall's tau at least `min_rank_correlation`); a provider failing its canary shares nothing.
The shared group is named after the smallest identity among the reference and the providers
known to agree with it as they are, whatever their verdicts: the same set of providers names
the same group in any fallback order, and one failing for a while does not rename it. A
calibrated provider's fresh scores are mapped onto the reference's scale before they are
cached, ranked or returned (its Placement's `scale`). Every other provider has a group of its
own and scores whole requests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from gateway.config import GatewayConfig, ProviderConfig
from gateway.quality.board import ProviderQuality, QualityBoard, QualityReport, QualityState
from gateway.quality.calibration import Calibration

IDENTITY_BYTES = 6  # 12 hex digits: a handful of identities per model, kept short in every key
_MARKS: dict[QualityState, str] = {"passing": "", "unknown": "?", "failing": "!"}


class Placement(NamedTuple):
    """Where a provider's fresh scores go: their group, and the map onto the group's scale (None: as they are)."""

    group: str
    scale: Calibration | None = None


@dataclass(frozen=True, slots=True)
class _Sharing:
    shares: bool
    scale: Calibration | None = None  # set when it shares through the map only


_APART = _Sharing(False)
_AS_IS = _Sharing(True)


def scoring_identity(provider: ProviderConfig) -> str:
    """What a score is about, as a short digest: the same for two names of one endpoint and model."""
    what = [provider.kind, provider.base_url.rstrip("/"), provider.model, provider.path, provider.score_transform]
    return hashlib.blake2b(orjson.dumps(what), digest_size=IDENTITY_BYTES).hexdigest()


class CacheGroups:
    """The cache-group answers for one config generation; what they rest on lives in the QualityBoard."""

    def __init__(self, config: GatewayConfig, board: QualityBoard, plannable: Callable[[str], bool]) -> None:
        self._config = config
        self._board = board
        self._plannable = plannable
        self._identities = {name: scoring_identity(provider) for name, provider in config.providers.items()}
        # The board never replaces an identity's entry, so this generation may hold on to them:
        # the router asks for a group several times per request.
        self._entries: dict[tuple[str, str], ProviderQuality] = {}
        for name, model in config.models.items():
            for provider in model.fallback:
                self._entries[(name, provider)] = board.entry(name, provider, fingerprint=self._identities[provider])
            board.note_reference(name, self.reference(name))

    def reference(self, model: str) -> str | None:
        return self._board.reference(model, self._config.models[model].fallback, self._plannable)

    def placement(self, model: str, provider: str) -> Placement:
        reference = self.reference(model)
        sharing = self._sharing(model, provider, reference)
        if reference is None or not sharing.shares:
            return Placement(self._name(model, self._identities[provider], self._entries[(model, provider)].state))
        # Agreement alone names the group, whatever the verdicts: a member failing its canary for
        # a while (it then writes to a group of its own) does not rename the group the others read.
        members = [p for p in self._config.models[model].fallback if self._agrees_as_is(model, p)]
        anchor = min(self._identities[p] for p in (reference, *members))
        return Placement(self._name(model, anchor, self._entries[(model, reference)].state), sharing.scale)

    def group_of(self, model: str, provider: str) -> str:
        return self.placement(model, provider).group

    def report(self, model: str, provider: str) -> QualityReport:
        entry = self._entries[(model, provider)]
        reference = self.reference(model)
        measured = entry.agreement.current()
        sharing = self._sharing(model, provider, reference)
        return QualityReport(
            state=entry.state,
            reason=entry.reason,
            reference=provider == reference,
            shares_cache=sharing.shares,
            mae=None if measured is None else measured.mae,
            kendall_tau=None if measured is None else measured.kendall_tau,
            group=self.group_of(model, provider),
            calibrated=sharing.scale is not None,
            calibration=None if provider == reference else entry.agreement.calibration(),
        )

    def _sharing(self, model: str, provider: str, reference: str | None) -> _Sharing:
        """Whether this provider's fresh scores may be ranked beside the reference's cached ones, and how."""
        if reference is None:
            return _APART
        if self._identities[provider] == self._identities[reference]:
            return _AS_IS  # the reference itself, perhaps under another name
        entry = self._entries[(model, provider)]
        if entry.state == "failing":
            return _APART
        if self._agrees_as_is(model, provider):
            return _AS_IS
        quality = self._config.models[model].quality
        measured = entry.agreement.current()
        calibration = entry.agreement.calibration()
        if (
            measured is not None
            and calibration is not None
            and calibration.mae_after <= quality.agreement_tolerance
            and measured.kendall_tau is not None
            and measured.kendall_tau >= quality.min_rank_correlation
        ):
            return _Sharing(True, calibration)
        return _APART

    def _agrees_as_is(self, model: str, provider: str) -> bool:
        """Known to agree with the reference as its scores are (the reference's agreement is unmeasured)."""
        return self._entries[(model, provider)].agreement.within(self._config.models[model].quality.agreement_tolerance)

    @staticmethod
    def _name(model: str, identity: str, state: QualityState) -> str:
        return f"{model}@{identity}{_MARKS[state]}"
