"""Who scores a request: one ordered plan per request, walked until a step answers.

    1. the model's own providers, in its fallback order         score the pairs the cache lacks
                                                                 (or all: see below)
    2. the providers of its `fallback_models`, in order          score every pair of the request
    3. the panic rule: nobody was called because every breaker   the provider whose breaker
       was open                                                  opened first, called anyway
    4. the lexical last resort, when configured                  BM25 of every pair, flagged

Another model's scores, or lexical ones, are never ranked beside the model's cached scores, so
steps 2 to 4 score the whole request (ScoreRequest.whole). Nor are the scores of a provider of the
same model that the quality guard has not found to agree with the provider whose scores the cache
held (another cache group): it too scores the whole request. One that shares the group only
through a map onto the reference's scale (gateway.quality.groups) has its answer mapped in
`_accept`, so everything after the router sees scores on the group's scale; the raw ones ride
along for the request log. A provider failing its canary is
planned after the model's other providers (`action = "skip"`), so it serves only when none of
them does, and skipped when it ranks like noise or no better than the lexical last resort
(QualityGuard.skip). A provider that cannot take the
request is noted as skipped; one that fails is noted with its reason, and the next step follows
unless the failure says the request itself is wrong. Every failure ends up in the one error the
client sees when the plan runs out.

Each provider attempt gets a slice of the request's remaining deadline
(gateway.resilience.deadline): a hanging provider costs its slice, and the next one answers in
the rest. With hedging on, a provider that has not answered within its delay gets company: the
same pairs go to the next step too (same model, same pairs), the first valid answer wins and
the other call is cancelled.

    plan.py   Planner: the steps, the panic step, the rate-limit wait, why a provider is passed over
    walk.py   PlanWalk: the steps called in turn, hedged, answers accepted or failures noted
    here      Router: plans, walks, and ends in the lexical last resort or the one error
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from gateway.budget import utc_now
from gateway.config import GatewayConfig
from gateway.errors import AllProvidersFailed, ProviderFailure
from gateway.models import KeptScores, ScoredPairs, ScoreRequest, Usage
from gateway.observability.metrics import GatewayMetrics
from gateway.providers.client import ProviderClient
from gateway.quality.guard import QualityGuard
from gateway.resilience import lexical_scores
from gateway.resilience.guarded_call import GuardedCall
from gateway.resilience.health import HealthBoard
from gateway.scoring.kept import KeptAnswers
from gateway.scoring.plan import Findings, Planner, first_opened, unavailable
from gateway.scoring.walk import PlanWalk

__all__ = ["DEGRADED_LEXICAL", "Findings", "Router", "first_opened", "unavailable"]

DEGRADED_LEXICAL = "degraded-lexical"


class Router:
    """Plans a request (Planner), walks the plan (PlanWalk), and ends it when nobody answered."""

    def __init__(
        self,
        config: GatewayConfig,
        clients: Mapping[str, ProviderClient],
        guard: GuardedCall,
        health: HealthBoard,
        metrics: GatewayMetrics,
        quality: QualityGuard,
    ) -> None:
        self._config = config
        self._planner = Planner(config, clients, guard, health, quality)
        self._walker = PlanWalk(config, guard, health, metrics, quality)

    @property
    def planner(self) -> Planner:
        return self._planner

    def cache_group(self, model: str, instruction: str | None, findings: Findings | None = None) -> str:
        return self._planner.cache_group(model, instruction, findings)

    def first_choice(self, model: str, instruction: str | None) -> str:
        return self._planner.first_choice(model, instruction)

    def why_not(
        self, model: str, provider: str, instruction: str | None, over_budget: bool = False
    ) -> ProviderFailure | None:
        return self._planner.why_not(model, provider, instruction, over_budget)

    async def score(
        self, request: ScoreRequest, kept: list[KeptScores] | None = None, findings: Findings | None = None
    ) -> ScoredPairs:
        """The first answer the plan gives; AllProvidersFailed (or a subclass) when none does.

        `findings`: what planning the request's cache group found, when this round follows it at once.

        `kept` receives, as they come, the answered calls of steps that did not give the answer (a
        split call that failed part-way, a hedge that lost, a call cut by the deadline): they were
        paid for, and the caller caches them whatever this returns or raises.
        """
        failures: list[ProviderFailure] = []
        answers = KeptAnswers([] if kept is None else kept)
        answer = await self._walker.walk(request, self._planner.steps(request, failures, findings), failures, answers)
        if answer is None:
            panic = self._planner.panic_step(request, failures)
            if panic is not None:
                answer = await self._walker.walk(request, [panic], failures, answers)
        if answer is None and (wait := self._planner.rate_limit_wait(request, failures)) is not None:
            await asyncio.sleep(wait)
            answer = await self._walker.walk(request, self._planner.steps(request, failures), failures, answers)
        if answer is not None:
            return answer
        if self._config.resilience.last_resort == "lexical":
            return _lexical(request)
        raise AllProvidersFailed.of(request.model, failures, utc_now())


def _lexical(request: ScoreRequest) -> ScoredPairs:
    """Step 4: BM25 of every pair against its own query's passages, so the client still gets an order.

    Lexical and model scores are not comparable: the whole request is scored this way, nothing
    of it is cached, and the result says so.
    """
    whole = request.whole
    scores = [0.0] * len(whole)
    for query, positions in whole.positions_by_query().items():
        for position, score in zip(positions, lexical_scores(query, [whole.documents[p] for p in positions])):
            scores[position] = score
    return ScoredPairs(scores, Usage(), DEGRADED_LEXICAL, request.model, DEGRADED_LEXICAL, whole=True, degraded=True)
