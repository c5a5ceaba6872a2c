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

    table.py  PlanTable: each model's routes (provider order, cache groups, scale maps, the quality
              guard's word), built once per config generation and quality-board version
    plan.py   Planner: the steps from the table and the live checks, the panic step, the
              rate-limit wait, why a provider is passed over
    walk.py   PlanWalk: the steps called in turn, hedged, answers accepted or failures noted
    here      Router: plans, walks, and ends in the lexical last resort or the one error
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.budget import utc_now
from gateway.errors import AllProvidersFailed, ProviderFailure
from gateway.models import KeptScores, ScoredPairs, ScoreRequest, Usage
from gateway.quality.guard import QualityGuard
from gateway.quality.parts import Parts
from gateway.resilience import lexical_scores
from gateway.scoring.kept import KeptAnswers
from gateway.scoring.plan import Planner, first_opened, unavailable
from gateway.scoring.table import PlanTable
from gateway.scoring.walk import PlanWalk

__all__ = ["DEGRADED_LEXICAL", "Router", "first_opened", "unavailable"]

DEGRADED_LEXICAL = "degraded-lexical"


class Router:
    """Plans a request (Planner, from the PlanTable), walks the plan (PlanWalk), and ends it when nobody answered."""

    def __init__(self, parts: Parts, quality: QualityGuard) -> None:
        self._config = parts.config
        self.table = PlanTable(parts, quality)
        self.planner = Planner(parts, self.table)
        self._walker = PlanWalk(parts, quality)

    def cache_group(self, model: str, instruction: str | None, language: str | None = None) -> tuple[str, str | None]:
        return self.planner.cache_group(model, instruction, language)

    def first_choice(self, model: str, instruction: str | None, language: str | None = None) -> str:
        return self.planner.first_choice(model, instruction, language)

    def language_of(self, model: str, queries: Sequence[str]) -> str | None:
        """The canary language whose plan the queries follow, where the model's plans differ by language."""
        return self.planner.language_of(model, queries)

    def why_not(
        self, model: str, provider: str, instruction: str | None, over_budget: bool = False
    ) -> ProviderFailure | None:
        return self.planner.why_not(model, provider, instruction, over_budget)

    async def score(self, request: ScoreRequest, kept: list[KeptScores] | None = None) -> ScoredPairs:
        """The first answer the plan gives; AllProvidersFailed (or a subclass) when none does.

        `kept` receives, as they come, the answered calls of steps that did not give the answer (a
        split call that failed part-way, a hedge that lost, a call cut by the deadline): they were
        paid for, and the caller caches them whatever this returns or raises.
        """
        failures: list[ProviderFailure] = []
        answers = KeptAnswers([] if kept is None else kept)
        planner = self.planner
        answer = await self._walker.walk(request, planner.steps(request, failures), failures, answers)
        if answer is None:
            panic = planner.panic_step(request, failures)
            if panic is not None:
                answer = await self._walker.walk(request, [panic], failures, answers)
        if answer is None and (wait := planner.rate_limit_wait(request, failures)) is not None:
            await asyncio.sleep(wait)
            answer = await self._walker.walk(request, planner.steps(request, failures), failures, answers)
        if answer is not None:
            return answer
        # A client over its own budget is refused, not served lexically: the budget is the answer.
        payer_refused = bool(failures) and all(failure.payer_over_budget for failure in failures)
        if self._config.resilience.last_resort == "lexical" and not payer_refused:
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
