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

Per language (gateway.quality.languages) a provider shares only where it agrees in that
language; where it does not, though it agrees overall, it writes to a group of its own for that
language (`MODEL@IDENTITY/LANGUAGE`), so that its scores never land in a group it anchors
elsewhere. A MIXED batch shares only what shares in every language.

Scores written before a verdict are kept when it passes: a route reads its sibling group for the
pairs its own lacks (`sibling`): before the verdict, the group it will write to once passing (a
restart with a warm Redis, or a worker that learned of the pass first); after a first pass, for
PRE_VERDICT_READ_SECONDS, the group it wrote to before (a worker that learned of it later). A
score found there is copied into the route's group. A provider that fails reads neither, so
what it wrote before its verdict is never read again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import orjson

from gateway.config import GatewayConfig, ProviderConfig
from gateway.quality.board import ProviderQuality, QualityBoard, QualityReport, QualityState
from gateway.quality.calibration import Calibration
from gateway.quality.languages import MIXED
from gateway.quality.sharing import APART, Sharing, agrees_as_is, sharing

IDENTITY_BYTES = 6  # 12 hex digits: a handful of identities per model, kept short in every key
_MARKS: dict[QualityState, str] = {"passing": "", "unknown": "?", "failing": "!"}
# How long after a provider's first pass its pre-verdict group is read for pairs its group lacks:
# long enough for every worker to learn of the pass and for the start's repeats to come back.
PRE_VERDICT_READ_SECONDS = 3600.0


class Sibling(NamedTuple):
    """A group a route reads the pairs its own group lacks from (see the module's docstring)."""

    group: str
    until: float | None  # wall-clock time it is read until; None: as long as the route stands


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

    def __init__(
        self, config: GatewayConfig, board: QualityBoard, plannable: Callable[[str], bool],
        languages: Mapping[str, Sequence[str]],
    ) -> None:
        self._config = config
        self._board = board
        self._plannable = plannable
        self._languages = languages  # per model: every language a query can be in (QueryLanguages.languages)
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
        of that language, or not measured to agree there, writes them to a group of its own."""
        reference = self.reference(model)
        state = self._entries[(model, provider)].verdict_in(language)[0]
        sharing = self._sharing(model, provider, reference, state, language)
        if reference is None or not sharing.shares:
            own = self._name(model, self._identities[provider], state)
            if language is not None and self._agrees_as_is(model, provider):
                own = f"{own}/{language}"  # its plain name may be the shared group's elsewhere
            return Placement(own)
        # Agreement alone names the group, whatever the verdicts: a member failing its canary for
        # a while (it then writes to a group of its own) does not rename the group the others read.
        members = [p for p in self._config.models[model].fallback if self._agrees_as_is(model, p)]
        anchor = min(self._identities[p] for p in (reference, *members))
        return Placement(self._name(model, anchor, self._entries[(model, reference)].state), sharing.scale)

    def group_of(self, model: str, provider: str) -> str:
        return self.placement(model, provider).group

    def sibling(self, model: str, provider: str, group: str, language: str | None = None) -> Sibling | None:
        """Where pairs missing from `group` (the provider's placement) may be read, and until when
        (wall-clock time; None: while the verdict is pending), or None."""
        entry = self._entries[(model, provider)]
        state = entry.verdict_in(language)[0]
        if self._config.models[model].quality.probe_interval_seconds <= 0:
            return None  # no verdict is coming: `?` is the mark for good
        # MODEL@IDENTITY[mark][/LANGUAGE]: the model's name may hold "/" or "?", the rest does not.
        named, at, placed = group.rpartition("@")
        identity, slash, language_part = placed.partition("/")
        if identity.endswith("?"):
            return Sibling(f"{named}{at}{identity[:-1]}{slash}{language_part}", None)
        if state == "passing" and entry.first_passed_at is not None and entry.failed_at is None:
            return Sibling(f"{named}{at}{identity}?{slash}{language_part}", entry.first_passed_at + PRE_VERDICT_READ_SECONDS)
        return None

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

    def _sharing(
        self, model: str, provider: str, reference: str | None, state: QualityState, language: str | None = None,
    ) -> Sharing:
        if reference is None:
            return APART
        is_reference = self._identities[provider] == self._identities[reference]
        entry, rule = self._entries[(model, provider)], self._config.models[model].quality
        if language != MIXED or is_reference:
            return sharing(entry, state, is_reference, rule, language)
        # A batch of several languages: only what shares in each of them, and overall.
        each = [sharing(entry, entry.verdict_in(one)[0], False, rule, one) for one in self._languages[model]]
        overall = sharing(entry, state, False, rule)
        if not overall.shares or not all(one.shares for one in each):
            return APART
        return overall

    def _agrees_as_is(self, model: str, provider: str) -> bool:
        return agrees_as_is(self._entries[(model, provider)], self._config.models[model].quality)

    @staticmethod
    def _name(model: str, identity: str, state: QualityState) -> str:
        return f"{model}@{identity}{_MARKS[state]}"
