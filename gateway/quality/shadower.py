"""Shadow traffic: a share (`shadow_rate`) of upstream scorings also goes to the next provider.

In the background, never delaying the answer, under budgets and breakers like any call (counted
as purpose="shadow"), never cached, cancelled when its generation retires. Per query, the
difference between the reference's scores and the other provider's feeds the agreement figures.
With Redis, the samples go to every worker (gateway.quality.fleet), like the canary's.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from gateway.config import GatewayConfig
from gateway.errors import ProviderFailure
from gateway.models import Batch
from gateway.observability.history import MinuteHistory
from gateway.providers.client import ProviderClient
from gateway.quality.agreement import mean_absolute_difference
from gateway.quality.board import QualityBoard
from gateway.quality.tracker import AgreementTracker
from gateway.resilience.guarded_call import GuardedCall

log = logging.getLogger("gateway.quality")


class Shadower:
    def __init__(
        self,
        config: GatewayConfig,
        clients: Mapping[str, ProviderClient],
        guard: GuardedCall,
        board: QualityBoard,
        rng: random.Random,
        next_provider: Callable[[str, str], str | None],
        reference: Callable[[str], str | None],
        publish: Callable[[str], None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        share: Callable[[str, str, list[tuple[int, float, float | None]]], Awaitable[None]],
        history: MinuteHistory | None = None,
    ) -> None:
        self._config = config
        self._clients = clients
        self._guard = guard
        self._board = board
        self._rng = rng
        self._next_provider = next_provider
        self._reference = reference
        self._publish = publish
        self._spawn = spawn
        self._share = share  # Prober.share_samples: to the board, and through Redis to every worker
        self._history = history  # this call's agreement, for the last hour on /status

    def maybe_shadow(self, model: str, scored_by: str, pairs: Batch, scores: Sequence[float]) -> None:
        """With probability `shadow_rate`, the same pairs to the next provider, in the background."""
        rate = self._config.models[model].quality.shadow_rate
        if rate <= 0 or self._rng.random() >= rate:
            return
        shadow = self._next_provider(model, scored_by)
        if shadow is not None:
            self._spawn(self._shadow(model, scored_by, shadow, pairs, list(scores)))

    async def _shadow(self, model: str, primary: str, shadow: str, pairs: Batch, scores: list[float]) -> None:
        try:
            shadow_scores, _ = await self._guard.score(self._clients[shadow], pairs, None, purpose="shadow")
        except ProviderFailure as failure:
            log.info("shadow call to %s for model %s failed: %s", shadow, model, failure)
            return
        reference = self._reference(model)
        if primary == reference:
            tracked, reference_scores, other_scores = shadow, scores, shadow_scores
        elif shadow == reference:
            tracked, reference_scores, other_scores = primary, shadow_scores, scores
        else:
            return  # neither side is the reference: nothing to measure against
        tracker = AgreementTracker()  # this call's samples alone, for the board and the fleet
        for positions in pairs.positions_by_query().values():
            tracker.add([reference_scores[i] for i in positions], [other_scores[i] for i in positions])
        self._board.entry(model, tracked).agreement.add_pairs(reference_scores, other_scores)
        if self._history is not None:
            self._history.record_agreement(model, tracked, mean_absolute_difference(reference_scores, other_scores))
        await self._share(model, tracked, tracker.export())
        self._publish(model)
