"""The quality guard at work: canary probes, shadow calls, and which providers may share cached scores.

    probes     every provider of a model runs the model's canary at start, after a reload and
               every `probe_interval_seconds`, as real calls through the guarded path (budgets,
               breaker, token counts; never cached)
    verdicts   a provider failing its canary is skipped (`action = "skip"`) or only reported
               ("warn"); one warning line when it starts failing, one when it recovers
    reference  the first provider in `fallback` that passes (gateway.quality.board)
    groups     the cache namespace a provider's scores belong to: the reference's, shared by every
               provider that agrees with it within `agreement_tolerance`, or the provider's own
    shadow     a share (`shadow_rate`) of upstream scorings also goes to the next provider in the
               background, never delaying the answer; the difference feeds the agreement figures

One QualityGuard per config generation; what it learns lives in the shared QualityBoard.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from gateway.config import GatewayConfig, ModelConfig
from gateway.errors import ProviderFailure
from gateway.models import Batch
from gateway.observability.metrics import GatewayMetrics
from gateway.providers.client import ProviderClient
from gateway.quality import CanaryLine, CanaryOutcome, builtin_canary, load_canary, run_canary
from gateway.quality.board import QualityBoard, QualityReport, Transition
from gateway.resilience.guarded_call import GuardedCall

log = logging.getLogger("gateway.quality")


class QualityGuard:
    def __init__(
        self,
        config: GatewayConfig,
        clients: Mapping[str, ProviderClient],
        guard: GuardedCall,
        board: QualityBoard,
        metrics: GatewayMetrics,
        rng: random.Random,
    ) -> None:
        self._config = config
        self._clients = clients
        self._guard = guard
        self._board = board
        self._metrics = metrics
        self._rng = rng
        self._canaries = {name: _canary_of(model) for name, model in config.models.items()}
        self._tasks: set[asyncio.Task[None]] = set()
        for name, model in config.models.items():
            for provider in model.fallback:
                board.entry(name, provider, fingerprint=_fingerprint(config, provider))
            board.note_reference(name, self.reference(name))

    # -- what the router asks while it plans ------------------------------------------------------

    def skip(self, model: str, provider: str) -> ProviderFailure | None:
        """A provider failing its canary, when the model's `action` is "skip"."""
        entry = self._board.entry(model, provider)
        if entry.state != "failing" or self._config.models[model].quality.action != "skip":
            return None
        return ProviderFailure(provider, f"failed its canary: {entry.reason}", kind="quality")

    def reference(self, model: str) -> str | None:
        return self._board.reference(model, self._config.models[model].fallback, self._plannable)

    def group_of(self, model: str, provider: str) -> str:
        """The cache namespace for this provider's scores of this model.

        Named after the provider whose scores it holds, so a new reference (or a reordered
        fallback) never reads scores another provider wrote under the old one.
        """
        reference = self.reference(model)
        tolerance = self._config.models[model].quality.agreement_tolerance
        owner = reference if self._board.shares_with_reference(model, provider, reference, tolerance) else provider
        return f"{model}@{owner}"

    def report(self, model: str, provider: str) -> QualityReport:
        entry = self._board.entry(model, provider)
        reference = self.reference(model)
        measured = entry.agreement.current()
        return QualityReport(
            state=entry.state,
            reason=entry.reason,
            reference=provider == reference,
            shares_cache=self._board.shares_with_reference(
                model, provider, reference, self._config.models[model].quality.agreement_tolerance
            ),
            mae=None if measured is None else measured.mae,
            kendall_tau=None if measured is None else measured.kendall_tau,
            canary=None if entry.canary is None else entry.canary.verdict.as_json(),
        )

    # -- probes -----------------------------------------------------------------------------------

    def start(self) -> None:
        for name, model in self._config.models.items():
            if model.quality.probe_interval_seconds > 0:
                self._spawn(self._probe_every(name, model.quality.probe_interval_seconds))

    async def close(self) -> None:
        """Stop probes and shadow calls: at shutdown, and when this generation retires."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def probe(self, model: str) -> None:
        """One round: every provider of the model runs the canary; then the reference and agreement."""
        outcomes = {}
        for provider in self._config.models[model].fallback:
            outcome = await self._probe_one(model, provider)
            if outcome is not None:
                outcomes[provider] = outcome
        reference = self.reference(model)
        self._board.note_reference(model, reference)
        reference_outcome = None if reference is None else self._board.entry(model, reference).canary
        for provider, outcome in outcomes.items():
            if reference_outcome is not None and provider != reference and outcome.lines == reference_outcome.lines:
                outcome.feed(self._board.entry(model, provider).agreement, reference_outcome)
        self.publish(model)

    async def _probe_every(self, model: str, interval: float) -> None:
        while True:
            try:
                await self.probe(model)
            except Exception:  # a probe round must never end the loop, or probing stops for good
                log.exception("canary probe round for model %s failed", model)
            await asyncio.sleep(interval)

    async def _probe_one(self, model: str, provider: str) -> CanaryOutcome | None:
        client = self._clients[provider]
        reason = client.unusable_reason(None)
        lines = [line for line in self._canaries[model] if line.instruction is None or client.adapter.takes_instruction]
        if reason is None and not lines:
            reason = f"every canary line carries an instruction, which kind {client.config.kind!r} cannot take"
        if reason is not None:
            self._board.record_unprobed(model, provider, f"not probed: {reason}")
            return None
        try:
            outcome = await run_canary(lines, lambda pairs: self._guard.score(client, pairs, None),
                                       self._config.models[model].quality.canary_pass_share)
        except ProviderFailure as failure:
            self._board.record_unprobed(model, provider, f"probe failed: {failure}")
            return None
        self._announce(self._board.record_verdict(model, provider, outcome))
        return outcome

    def _announce(self, transition: Transition | None) -> None:
        if transition is None:
            return
        if transition.state == "failing":
            log.warning("provider %s of model %s fails its canary: %s", transition.provider, transition.model, transition.reason)
        else:
            log.warning("provider %s of model %s passes its canary again: %s", transition.provider, transition.model,
                        transition.reason)

    def publish(self, model: str) -> None:
        """The model's quality figures in /metrics."""
        for provider in self._config.models[model].fallback:
            entry = self._board.entry(model, provider)
            if entry.state != "unknown":
                self._metrics.set_provider_quality(model=model, provider=provider, passing=entry.state == "passing")
            measured = entry.agreement.current()
            if measured is not None:
                self._metrics.set_provider_agreement(model=model, provider=provider, measure="mae", value=measured.mae)
                if measured.kendall_tau is not None:
                    self._metrics.set_provider_agreement(
                        model=model, provider=provider, measure="kendall_tau", value=measured.kendall_tau
                    )

    # -- shadow traffic ---------------------------------------------------------------------------

    def maybe_shadow(self, model: str, scored_by: str, pairs: Batch, scores: Sequence[float]) -> None:
        """With probability `shadow_rate`, the same pairs to the next provider, in the background."""
        rate = self._config.models[model].quality.shadow_rate
        if rate <= 0 or self._rng.random() >= rate:
            return
        shadow = self._next_provider(model, scored_by)
        if shadow is not None:
            self._spawn(self._shadow(model, scored_by, shadow, pairs, list(scores)))

    def _next_provider(self, model: str, after: str) -> str | None:
        fallback = self._config.models[model].fallback
        for provider in fallback[fallback.index(after) + 1:]:
            if self._plannable(provider) and self.skip(model, provider) is None:
                return provider
        return None

    async def _shadow(self, model: str, primary: str, shadow: str, pairs: Batch, scores: list[float]) -> None:
        try:
            shadow_scores, _ = await self._guard.score(self._clients[shadow], pairs, None)
        except ProviderFailure as failure:
            log.info("shadow call to %s for model %s failed: %s", shadow, model, failure)
            return
        reference = self.reference(model)
        if primary == reference:
            tracked, reference_scores, other_scores = shadow, scores, shadow_scores
        elif shadow == reference:
            tracked, reference_scores, other_scores = primary, shadow_scores, scores
        else:
            return  # neither side is the reference: nothing to measure against
        tracker = self._board.entry(model, tracked).agreement
        for positions in pairs.positions_by_query().values():
            tracker.add([reference_scores[i] for i in positions], [other_scores[i] for i in positions])
        self.publish(model)

    # -- helpers ----------------------------------------------------------------------------------

    def _plannable(self, provider: str) -> bool:
        return self._clients[provider].unusable_reason(None) is None

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _canary_of(model: ModelConfig) -> tuple[CanaryLine, ...]:
    canary = model.quality.canary
    return builtin_canary() if canary is None else load_canary(canary)


def _fingerprint(config: GatewayConfig, provider: str) -> tuple[str, str, str, str | None, str]:
    """What a verdict is about: another URL, upstream model, kind, path or transform is another provider."""
    p = config.providers[provider]
    return (p.base_url, p.model, p.kind, p.path, p.score_transform)


