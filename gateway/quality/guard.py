"""The quality guard's answers to the router, and the probes and shadow calls that inform them.

    verdicts   the plan tries providers passing their canary first, then those not judged yet,
               then those failing it (`action = "skip"`): a failing one serves only when none of
               the others does, flagged (`failing_serves`); it is skipped outright
               when it ranks like noise (no better than chance on the canary), or when the
               lexical last resort is on and ranks the canary at least as well
               (gateway.quality.standing); "warn" only reports
    reference  the first provider in `fallback` that passes (gateway.quality.board)
    groups     the cache group a provider's scores belong to, and the map onto the reference's
               scale: answered by gateway.quality.groups (`QualityGuard.groups`), not here
    probes     gateway.quality.prober: at start, after a reload (changed providers only) and every
               `probe_interval_seconds`, once per fleet when Redis is configured
    shadow     gateway.quality.shadower: a share of upstream scorings also to the next provider

One QualityGuard per config generation, built from the generation's Parts
(gateway.quality.parts); what it learns lives in the shared QualityBoard. Its background work
(probe loops, shadow calls) runs in contexts of its own (gateway.quality.background).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from gateway.config import ModelConfig
from gateway.errors import ProviderFailure
from gateway.models import Batch
from gateway.quality import CanaryLine, builtin_canary, load_canary
from gateway.quality.board import QualityReport
from gateway.quality.figures import publish_quality
from gateway.quality.groups import CacheGroups
from gateway.quality.languages import QueryLanguages
from gateway.quality.parts import Parts
from gateway.quality.prober import Prober
from gateway.quality.shadower import Shadower


class QualityGuard:
    def __init__(self, parts: Parts) -> None:
        self._parts = parts
        self._config = parts.config
        self._board = parts.board
        self._canaries = {name: _canary_of(model) for name, model in parts.config.models.items()}
        # Per model: which language of its canary a query is in, fixed for the generation.
        self.languages = {name: QueryLanguages(lines) for name, lines in self._canaries.items()}
        self.groups = CacheGroups(parts.config, parts.board, parts.plannable,
                                  {name: found.languages for name, found in self.languages.items()})
        self._prober = Prober(parts, self._canaries)
        self._shadower = Shadower(parts, self._prober.share_samples, self.languages)
        for name in parts.config.models:
            self._prober.rejudge(name)

    # -- what the router asks while it plans ------------------------------------------------------

    def skip(self, model: str, provider: str, language: str | None = None) -> ProviderFailure | None:
        """A provider failing its canary (in `language`, where the canary has lines of it) that must
        not serve even when nothing else can (`action = "skip"`): it ranks like noise there, or the
        lexical last resort is on and ranks those lines as well."""
        entry = self._board.entry(model, provider)
        state, standing = entry.verdict_in(language)
        if state != "failing" or self._config.models[model].quality.action != "skip" or standing is None:
            return None
        if standing.like_noise:
            why = f"ranks like noise ({standing.describe()})"
        elif standing.no_better_than_lexical and self._config.resilience.last_resort == "lexical":
            why = f"no better than the lexical last resort ({standing.describe()})"
        else:
            return None
        where = "" if language is None or language not in entry.languages else f" in {language}"
        return ProviderFailure(provider, f"failed its canary{where} and {why}: {entry.reason}", kind="quality")

    def failing_serves(self, model: str, provider: str, language: str | None = None) -> bool:
        """Fails its canary (in `language`) yet may serve: its answers say so (X-Rerank-Quality: failing)."""
        state, _ = self._board.entry(model, provider).verdict_in(language)
        return state == "failing" and self.skip(model, provider, language) is None

    def judged_in(self, model: str, provider: str, language: str | None) -> str | None:
        """`language` where the provider's verdict there is its own (the canary has lines of it), else None."""
        return language if language in self._board.entry(model, provider).languages else None

    def plan_order(self, model: str, language: str | None = None) -> list[str]:
        """The model's fallback in three tiers (`action = "skip"`): those passing their canary (in
        `language`), then those not judged yet, then those failing it, each tier in ops' order. So a
        provider just added or re-pointed waits behind one that passes until its own verdict comes,
        and one that fails serves only when nothing else can; with no verdicts yet it is ops' order."""
        fallback = self._config.models[model].fallback
        if self._config.models[model].quality.action != "skip":
            return list(fallback)
        tier = {"passing": 0, "unknown": 1, "failing": 2}
        return sorted(fallback, key=lambda provider: tier[self._board.entry(model, provider).verdict_in(language)[0]])

    def reference(self, model: str) -> str | None:
        return self._parts.reference(model)

    def report(self, model: str, provider: str) -> QualityReport:
        """The cache-group figures, and whether a failing provider still serves and why."""
        entry = self._board.entry(model, provider)
        languages = {
            language: {"state": found.state, "serves": self.skip(model, provider, language) is None,
                       "standing": None if found.standing is None else found.standing.describe()}
            for language, found in entry.languages.items()
        }
        serves_overall = entry.state != "failing" or self.skip(model, provider) is None
        return dataclasses.replace(
            self.groups.report(model, provider),
            # Served where it passes, or ranks well enough, in some language of the canary: a model
            # pruned to English serves English queries though its pooled verdict is noise.
            serves=serves_overall or any(found["serves"] for found in languages.values()),
            standing=None if entry.standing is None else entry.standing.describe(),
            canary=None if entry.canary is None else entry.canary.verdict.as_json(),
            languages=languages,
        )

    # -- probes and shadow calls ------------------------------------------------------------------

    def start(self) -> None:
        for name, model in self._config.models.items():
            # Probes off, shadow calls on: with Redis the loop still reads what the fleet measured.
            reads = self._parts.verdicts.shared and model.quality.shadow_rate > 0
            if model.quality.probe_interval_seconds > 0 or reads:
                self._parts.background.spawn(self._prober.run(name))

    async def close(self) -> None:
        """Stop probes and shadow calls: at shutdown, and when this generation retires."""
        await self._parts.background.close()

    def maybe_shadow(self, model: str, scored_by: str, pairs: Batch, scores: Sequence[float]) -> None:
        self._shadower.maybe_shadow(model, scored_by, pairs, scores)

    def publish(self, model: str) -> None:
        """The model's quality figures in /metrics."""
        publish_quality(self._parts, model)


def _canary_of(model: ModelConfig) -> tuple[CanaryLine, ...]:
    canary = model.quality.canary
    return builtin_canary() if canary is None else load_canary(canary)

