"""Shadow traffic: a share (`shadow_rate`) of upstream scorings also goes to the next provider.

In the background, never delaying the answer, under budgets and breakers like any call (counted
as purpose="shadow"), never cached, cancelled when its generation retires, and in a context of
its own (gateway.quality.background): never part of the client request it shadows. Per query, the
difference between the reference's scores and the other provider's feeds the agreement figures.
With Redis, the samples go to every worker (gateway.quality.verdict_store), like the canary's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from gateway.errors import ProviderFailure
from gateway.models import Batch
from gateway.quality.agreement import mean_absolute_difference
from gateway.quality.figures import publish_quality
from gateway.quality.languages import MIXED, QueryLanguages
from gateway.quality.parts import Parts
from gateway.quality.tracker import AgreementTracker, SampleRow

log = logging.getLogger("gateway.quality")

ShareSamples = Callable[[str, str, list[SampleRow]], Awaitable[None]]


class Shadower:
    def __init__(self, parts: Parts, share: ShareSamples, languages: Mapping[str, QueryLanguages]) -> None:
        self._parts = parts
        self._share = share  # Prober.share_samples: to the board, and through Redis to every worker
        self._languages = languages  # each sample is the agreement in its query's language

    def maybe_shadow(self, model: str, scored_by: str, pairs: Batch, scores: Sequence[float]) -> None:
        """With probability `shadow_rate`, the same pairs to the next provider, in the background."""
        rate = self._parts.config.models[model].quality.shadow_rate
        if rate <= 0 or self._parts.rng.random() >= rate:
            return
        shadow = self._next_provider(model, scored_by)
        if shadow is not None:
            self._parts.background.spawn(self._shadow(model, scored_by, shadow, pairs, list(scores)))

    def _next_provider(self, model: str, after: str) -> str | None:
        """The shadow of `after`: the next provider that can be called and does not fail its canary."""
        fallback = self._parts.config.models[model].fallback
        for provider in fallback[fallback.index(after) + 1:]:
            if self._parts.plannable(provider) and self._parts.board.entry(model, provider).state != "failing":
                return provider
        return None

    async def _shadow(self, model: str, primary: str, shadow: str, pairs: Batch, scores: list[float]) -> None:
        parts = self._parts
        try:
            shadow_scores, _ = await parts.calls.score(parts.clients[shadow], pairs, None, purpose="shadow")
        except ProviderFailure as failure:
            log.info("shadow call to %s for model %s failed: %s", shadow, model, failure)
            return
        reference = parts.reference(model)
        if primary == reference:
            tracked, reference_scores, other_scores = shadow, scores, shadow_scores
        elif shadow == reference:
            tracked, reference_scores, other_scores = primary, shadow_scores, scores
        else:
            return  # neither side is the reference: nothing to measure against
        tracker = AgreementTracker()  # this call's samples alone, for the board and the fleet
        language_of = self._languages[model].of
        for query, positions in pairs.positions_by_query().items():
            theirs, ours = [reference_scores[i] for i in positions], [other_scores[i] for i in positions]
            told = language_of(query)
            language = None if told == MIXED else told
            tracker.add(theirs, ours, language)
            parts.board.add_agreement_pairs(model, tracked, theirs, ours, language)
        parts.metrics.history.record_agreement(model, tracked, mean_absolute_difference(reference_scores, other_scores))
        await self._share(model, tracked, tracker.export())
        publish_quality(parts, model)
