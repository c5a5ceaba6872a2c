"""The plan of one request: which providers, in which order, as which steps (see gateway.scoring.router).

    Planner.steps        steps 1 and 2: the model's routes in the plan table's order (passing,
                         not judged yet, failing), then its fallback models'; those that cannot be
                         called now are noted as skipped, with why_not's reason
    Planner.panic_step   step 3: every breaker was open and nobody was called: the one opened first
    Planner.rate_limit_wait
                         step 3b: rate limits alone kept everyone out: how long to wait, if it fits
    Planner.why_not      the one rule the plan, the cache group and /readyz share

No I/O here, and nothing worked out again per request that only changes with the config or the
quality board: that is the plan table's (gateway.scoring.table). A request reads its model's
routes and applies the live checks (the provider's key and the instruction, its rate limit, its
breaker); the guarded call asks the breaker and the rate limit again at the call itself, and
reserves the budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from gateway.config import GatewayConfig
from gateway.errors import ProviderFailure
from gateway.models import ScoreRequest
from gateway.observability.trace import note_attempt
from gateway.providers.client import ProviderClient
from gateway.quality.calibration import Calibration
from gateway.quality.parts import Parts
from gateway.records import record
from gateway.resilience.guarded_call import refusing_skip
from gateway.resilience.health import HealthBoard, ProviderHealth
from gateway.scoring.table import ModelPlan, PlanTable, Route


@record(eq=False)
class Step:
    """One provider call the plan may make.

    Each step is its own (eq=False): KeptAnswers finds a step's call by the step, and identity
    is what that means; the generated field-by-field hash cost a miss three Python calls.
    """

    model: str  # the model whose scores this step gives
    client: ProviderClient
    group: str  # the cache group its scores belong to
    whole: bool  # scores every pair of the request, not only the missing ones
    panic: bool = False  # called although its breaker is open (the panic rule)
    scale: Calibration | None = None  # maps its scores onto its group's scale; None: taken as they are


class Planner:
    def __init__(self, parts: Parts, table: PlanTable) -> None:
        self._config: GatewayConfig = parts.config
        self._calls = parts.calls
        self._health = parts.health
        self._table = table

    def cache_group(self, model: str, instruction: str | None, language: str | None = None) -> tuple[str, str | None]:
        """Where the request's cached scores are read: the group of the provider the plan would call
        first, and the sibling group its missing pairs may be read from (None: none now)."""
        route = self._first_route(self._table.plan(model, language), instruction)
        sibling = route.sibling
        if sibling is None or (sibling.until is not None and time.time() > sibling.until):
            return route.group, None
        return route.group, sibling.group

    def first_choice(self, model: str, instruction: str | None, language: str | None = None) -> str:
        """The provider of the model the plan would call first (else its reference, else its first)."""
        return self._first_route(self._table.plan(model, language), instruction).provider

    def language_of(self, model: str, queries: Sequence[str]) -> str | None:
        return self._table.language_of(model, queries)

    def _first_route(self, plan: ModelPlan, instruction: str | None) -> Route:
        for route in plan.routes:
            if self._skip(route, instruction) is None:
                return route
        return plan.default

    def why_not(
        self, model: str, provider: str, instruction: str | None, over_budget: bool = False
    ) -> ProviderFailure | None:
        """Why the plan would pass this provider over now, or None: the one rule the router and /readyz share.

        `over_budget` is what a report of the ledger says; the router learns it by reserving instead.
        """
        return self._skip(self._table.plan(model).by_provider[provider], instruction, over_budget)

    def _skip(self, route: Route, instruction: str | None, over_budget: bool = False) -> ProviderFailure | None:
        """The live checks, then the quality guard's word from the table."""
        unusable = route.unusable if instruction is None else route.unusable_with_instruction
        if unusable is not None:
            return ProviderFailure(route.provider, unusable, kind="unusable")
        skip = unavailable(route.client, self._health[route.provider], over_budget)
        return skip or route.quality_skip

    def steps(self, request: ScoreRequest, failures: list[ProviderFailure]) -> list[Step]:
        """Steps 1 and 2 of the plan: the model's own routes, then its fallback models'; those
        that cannot take the request now are noted as skipped."""
        steps = []
        instruction = request.missing.instruction
        for model_plan in self._model_plans(request):
            for route in model_plan.routes:  # passing, not judged yet, failing (QualityGuard.plan_order)
                skip = self._skip(route, instruction)
                if skip is None:
                    steps.append(self._step(request, route))
                    continue
                if skip.kind in ("breaker_open", "quality", "rate_limited", "refusing"):
                    self._calls.note_skip(skip)
                else:
                    note_attempt(skip.provider, skip.kind, 0.0)  # the request log lists every provider passed over
                failures.append(skip)
        return steps

    def _model_plans(self, request: ScoreRequest) -> list[ModelPlan]:
        """The requested model's plan, then its fallback models', all in the request's language."""
        plan = self._table.plan(request.model, request.language)
        return [plan, *(self._table.plan(other, request.language) for other in plan.fallback_models)]

    @staticmethod
    def _step(request: ScoreRequest, route: Route, panic: bool = False) -> Step:
        whole = route.model != request.model or route.group != request.group
        return Step(route.model, route.client, route.group, whole=whole, panic=panic, scale=route.scale)

    def panic_step(self, request: ScoreRequest, failures: Sequence[ProviderFailure]) -> Step | None:
        """Step 3: when no provider was called and open breakers kept some out, the one opened first.

        Refusing would turn a short joint outage into one as long as the breakers' cool-down;
        letting one provider through finds out at once whether it has recovered, and a failure
        opens its breaker again, so the next request tries the other one.
        """
        if any(not failure.skipped for failure in failures):
            return None  # a provider was called and failed: this is no breaker blackout
        refused = {failure.provider for failure in failures if failure.kind == "breaker_open"}
        for model_plan in self._model_plans(request):
            providers = [p for p in self._config.models[model_plan.model].fallback if p in refused]
            target = first_opened(providers, self._health)
            if target is not None:
                return self._step(request, model_plan.by_provider[target], panic=True)
        return None

    def rate_limit_wait(self, request: ScoreRequest, failures: Sequence[ProviderFailure]) -> float | None:
        """Step 3b: nobody answered and a rate limit kept some provider out: the seconds until the
        first one lifts, when that fits well inside the deadline (half the time left); else None."""
        limited = {f.provider for f in failures if f.kind in ("rate_limited", "http_429")}
        if not limited or request.deadline is None:
            return None
        wait = min(self._health[provider].rate_limited_for() for provider in limited)
        left = request.deadline - asyncio.get_running_loop().time()
        return None if wait > left / 2 else wait


def unavailable(client: ProviderClient, health: ProviderHealth, over_budget: bool = False) -> ProviderFailure | None:
    """Why a provider that could be called cannot be now, whatever the model: its rate limit, refusal
    of our key, breaker or budget; each says when it ends, where that is known."""
    provider = client.name
    if (rate_limited_for := health.rate_limited_for()) > 0:
        return ProviderFailure(provider, f"rate limited for {rate_limited_for:.1f}s more (its 429's Retry-After)",
                               kind="rate_limited", ends_in=rate_limited_for)
    refusal = health.refusal.current(client.identity)
    if refusal is not None and (wait := health.refusal.seconds_until_probe(client.identity)) > 0:
        return refusing_skip(provider, refusal, wait)
    breaker = health.breaker.status()
    if breaker.state == "open":
        reason = f"circuit open after repeated failures: {breaker.last_failure}" if breaker.last_failure \
            else "circuit open after repeated failures"
        return ProviderFailure(provider, reason, kind="breaker_open", ends_in=breaker.seconds_until_probe)
    if over_budget:
        return ProviderFailure(provider, "budget exhausted", kind="budget")
    return None


def first_opened(providers: Sequence[str], health: HealthBoard) -> str | None:
    """Of these providers, the one whose breaker opened first and is not closed again; the panic target."""
    opened = [
        (status.opened_at, provider)
        for provider in providers
        if (status := health[provider].breaker.status()).state != "closed" and status.opened_at is not None
    ]
    return min(opened)[1] if opened else None
