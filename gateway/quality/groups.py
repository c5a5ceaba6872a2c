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
provider the sharing rule (gateway.quality.sharing) lets share, as its scores are or mapped
onto the reference's scale; a provider failing its canary shares nothing.
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
from typing import NamedTuple

import orjson

from gateway.config import GatewayConfig, ProviderConfig
from gateway.quality.board import ProviderQuality, QualityBoard, QualityReport, QualityState
from gateway.quality.calibration import Calibration
from gateway.quality.sharing import APART, Sharing, agrees_as_is, sharing

IDENTITY_BYTES = 6  # 12 hex digits: a handful of identities per model, kept short in every key
_MARKS: dict[QualityState, str] = {"passing": "", "unknown": "?", "failing": "!"}


class Placement(NamedTuple):
    """Where a provider's fresh scores go: their group, and the map onto the group's scale (None: as they are)."""

    group: str
    scale: Calibration | None = None


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

    def placement(self, model: str, provider: str, language: str | None = None) -> Placement:
        """Where its fresh scores of a query in `language` go: a provider failing the canary's lines
        of that language writes them to a group of its own there, whatever it does elsewhere."""
        reference = self.reference(model)
        state = self._entries[(model, provider)].verdict_in(language)[0]
        sharing = self._sharing(model, provider, reference, state)
        if reference is None or not sharing.shares:
            return Placement(self._name(model, self._identities[provider], state))
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
        sharing = self._sharing(model, provider, reference, entry.state)
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

    def _sharing(self, model: str, provider: str, reference: str | None, state: QualityState) -> Sharing:
        if reference is None:
            return APART
        is_reference = self._identities[provider] == self._identities[reference]
        return sharing(self._entries[(model, provider)], state, is_reference, self._config.models[model].quality)

    def _agrees_as_is(self, model: str, provider: str) -> bool:
        return agrees_as_is(self._entries[(model, provider)], self._config.models[model].quality)

    @staticmethod
    def _name(model: str, identity: str, state: QualityState) -> str:
        return f"{model}@{identity}{_MARKS[state]}"
