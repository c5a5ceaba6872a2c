"""The quality guard's answers to the router, and the probes and shadow calls that inform them.

    verdicts   a provider failing its canary (`action = "skip"`) is passed over only while
               something better can answer: it goes after the model's other providers, so it
               serves when none of them does, flagged (`failing_serves`); it is skipped outright
               when it ranks like noise (no better than chance on the canary), or when the
               lexical last resort is on and ranks the canary at least as well
               (gateway.quality.standing); "warn" only reports
    reference  the first provider in `fallback` that passes (gateway.quality.board)
    groups     the cache group a provider's scores belong to, and the map onto the reference's
               scale: answered by gateway.quality.groups (`QualityGuard.groups`), not here
    probes     gateway.quality.prober: at start, after a reload (changed providers only) and every
               `probe_interval_seconds`, once per fleet when Redis is configured
    shadow     gateway.quality.shadower: a share of upstream scorings also to the next provider

One QualityGuard per config generation; what it learns lives in the shared QualityBoard.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from gateway.config import GatewayConfig, ModelConfig
from gateway.errors import ProviderFailure
from gateway.models import Batch
from gateway.observability.metrics import GatewayMetrics
from gateway.providers.client import ProviderClient
from gateway.quality import CanaryLine, builtin_canary, load_canary
from gateway.quality.board import QualityBoard, QualityReport
from gateway.quality.fleet import LocalVerdicts, VerdictStore
from gateway.quality.groups import CacheGroups, scoring_identity
from gateway.quality.prober import Prober
from gateway.quality.shadower import Shadower
from gateway.resilience.guarded_call import GuardedCall


class QualityGuard:
    def __init__(
        self,
        config: GatewayConfig,
        clients: Mapping[str, ProviderClient],
        guard: GuardedCall,
        board: QualityBoard,
        metrics: GatewayMetrics,
        rng: random.Random,
        store: VerdictStore | None = None,
    ) -> None:
        self._config = config
        self._clients = clients
        self._board = board
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self.groups = CacheGroups(config, board, self._plannable)
        canaries = {name: _canary_of(model) for name, model in config.models.items()}
        # What a verdict is about, in Redis keys too: the identity cache groups are named by.
        fingerprints = {name: scoring_identity(provider) for name, provider in config.providers.items()}
        self._prober = Prober(config, clients, guard, board, store or LocalVerdicts(), canaries, fingerprints,
                              self.reference, self.publish)
        self._shadower = Shadower(config, clients, guard, board, rng, self._next_provider, self.reference,
                                  self.publish, self._spawn, self._prober.share_samples, metrics.history)
        self._shared = self._prober.shared
        for name in config.models:
            self._prober.rejudge(name)

    # -- what the router asks while it plans ------------------------------------------------------

    def skip(self, model: str, provider: str) -> ProviderFailure | None:
        """A provider failing its canary that must not serve even when nothing else can (`action = "skip"`):
        it ranks like noise, or the lexical last resort is on and ranks the canary as well."""
        entry = self._board.entry(model, provider)
        if entry.state != "failing" or self._config.models[model].quality.action != "skip":
            return None
        standing = entry.standing
        if standing is None:
            return None
        if standing.like_noise:
            why = f"ranks like noise ({standing.describe()})"
        elif standing.no_better_than_lexical and self._config.resilience.last_resort == "lexical":
            why = f"no better than the lexical last resort ({standing.describe()})"
        else:
            return None
        return ProviderFailure(provider, f"failed its canary and {why}: {entry.reason}", kind="quality")

    def failing_serves(self, model: str, provider: str) -> bool:
        """Fails its canary yet may serve: its answers say so (X-Rerank-Quality: failing)."""
        return self._board.entry(model, provider).state == "failing" and self.skip(model, provider) is None

    def plan_order(self, model: str) -> list[str]:
        """The model's fallback, with providers failing their canary after the others (`action = "skip"`):
        a provider that passes, or is not probed yet, answers first while it can."""
        fallback = self._config.models[model].fallback
        if self._config.models[model].quality.action != "skip":
            return list(fallback)
        failing = [p for p in fallback if self._board.entry(model, p).state == "failing"]
        return [p for p in fallback if p not in failing] + failing

    def reference(self, model: str) -> str | None:
        return self.groups.reference(model)

    def report(self, model: str, provider: str) -> QualityReport:
        """The cache-group figures, and whether a failing provider still serves and why."""
        entry = self._board.entry(model, provider)
        return dataclasses.replace(
            self.groups.report(model, provider),
            serves=entry.state != "failing" or self.skip(model, provider) is None,
            standing=None if entry.standing is None else entry.standing.describe(),
            canary=None if entry.canary is None else entry.canary.verdict.as_json(),
        )

    # -- probes and shadow calls ------------------------------------------------------------------

    def start(self) -> None:
        for name, model in self._config.models.items():
            # Probes off, shadow calls on: with Redis the loop still reads what the fleet measured.
            reads = self._shared and model.quality.shadow_rate > 0
            if model.quality.probe_interval_seconds > 0 or reads:
                self._spawn(self._prober.run(name))

    async def close(self) -> None:
        """Stop probes and shadow calls: at shutdown, and when this generation retires."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def maybe_shadow(self, model: str, scored_by: str, pairs: Batch, scores: Sequence[float]) -> None:
        self._shadower.maybe_shadow(model, scored_by, pairs, scores)

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
            calibration = entry.agreement.calibration()
            if calibration is not None:
                self._metrics.set_provider_agreement(
                    model=model, provider=provider, measure="mae_calibrated", value=calibration.mae_after
                )
                self._metrics.set_provider_agreement(
                    model=model, provider=provider, measure="calibration_pairs", value=calibration.pairs
                )

    def _next_provider(self, model: str, after: str) -> str | None:
        """The shadow of `after`: the next provider that can be called and does not fail its canary."""
        fallback = self._config.models[model].fallback
        for provider in fallback[fallback.index(after) + 1:]:
            if self._plannable(provider) and self._board.entry(model, provider).state != "failing":
                return provider
        return None

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

