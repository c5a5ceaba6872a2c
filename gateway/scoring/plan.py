"""The plan of one request: which providers, in which order, as which steps (see gateway.scoring.router).

    Planner.steps        steps 1 and 2: the model's providers in plan order (failing canaries
                         last), then its fallback models'; those that cannot be called now are
                         noted as skipped, with why_not's reason
    Planner.panic_step   step 3: every breaker was open and nobody was called: the one opened first
    Planner.rate_limit_wait
                         step 3b: rate limits alone kept everyone out: how long to wait, if it fits
    Planner.why_not      the one rule the plan, the cache group and /readyz share

No I/O here: the plan is decided from the config, the health board and the quality guard's
answers; gateway.scoring.walk makes the calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from gateway.config import GatewayConfig
from gateway.errors import ProviderFailure
from gateway.models import ScoreRequest
from gateway.observability.trace import note_attempt
from gateway.providers.client import ProviderClient
from gateway.quality.calibration import Calibration
from gateway.quality.groups import Placement
from gateway.quality.guard import QualityGuard
from gateway.records import record
from gateway.resilience import CircuitBreaker
from gateway.resilience.guarded_call import GuardedCall
from gateway.resilience.health import HealthBoard


class Findings:
    """What the plan found for one request, looked up once: each model's provider order, and each
    provider's why_not and placement.

    The service plans the request's cache group and then, right after the cache lookup, its
    first scoring round: with these, the round reuses what the group was chosen by instead of
    asking every breaker, rate limit, budget rule and quality verdict again (which was most of
    a plan's cost). A round after the request waited for another request or process, or for a
    rate limit, looks again (Job.findings is cleared before any such wait), and the guard asks
    the breaker and the rate limit again at the call itself.
    """

    __slots__ = ("orders", "placements", "skips")

    def __init__(self) -> None:
        self.orders: dict[str, list[str]] = {}
        self.skips: dict[tuple[str, str, str | None], ProviderFailure | None] = {}
        self.placements: dict[tuple[str, str], Placement] = {}


@record(eq=False)
class Step:
    """One provider call the plan may make.

    Each step is its own (eq=False): KeptAnswers finds a step's call by the step, and identity
    is what that means; the generated field-by-field hash cost a miss three Python calls.
    """

    model: str  # the model whose scores this step gives
    client: ProviderClient
    group: str  # the cache namespace its scores belong to
    whole: bool  # scores every pair of the request, not only the missing ones
    panic: bool = False  # called although its breaker is open (the panic rule)
    scale: Calibration | None = None  # maps its scores onto its group's scale; None: taken as they are


class Planner:
    def __init__(
        self,
        config: GatewayConfig,
        clients: Mapping[str, ProviderClient],
        guard: GuardedCall,
        health: HealthBoard,
        quality: QualityGuard,
    ) -> None:
        self._config = config
        self._clients = clients
        self._guard = guard
        self._health = health
        self._quality = quality
        self._groups = quality.groups

    def cache_group(self, model: str, instruction: str | None, findings: Findings | None = None) -> str:
        """Where the request's cached scores are read: the group of the provider the plan would call first."""
        return self._placement(model, self.first_choice(model, instruction, findings), findings).group

    def first_choice(self, model: str, instruction: str | None, findings: Findings | None = None) -> str:
        """The provider of the model the plan would call first (else its reference, else its first)."""
        for provider in self._plan_order(model, findings):
            if self._why_not(model, provider, instruction, findings) is None:
                return provider
        return self._groups.reference(model) or self._config.models[model].fallback[0]

    def _plan_order(self, model: str, findings: Findings | None) -> list[str]:
        if findings is None:
            return self._quality.plan_order(model)
        order = findings.orders.get(model)
        if order is None:
            order = findings.orders[model] = self._quality.plan_order(model)
        return order

    def _why_not(
        self, model: str, provider: str, instruction: str | None, findings: Findings | None
    ) -> ProviderFailure | None:
        if findings is None:
            return self.why_not(model, provider, instruction)
        key = (model, provider, instruction)
        if key not in findings.skips:
            findings.skips[key] = self.why_not(model, provider, instruction)
        return findings.skips[key]

    def _placement(self, model: str, provider: str, findings: Findings | None) -> Placement:
        if findings is None:
            return self._groups.placement(model, provider)
        key = (model, provider)
        found = findings.placements.get(key)
        if found is None:
            found = findings.placements[key] = self._groups.placement(model, provider)
        return found

    def why_not(
        self, model: str, provider: str, instruction: str | None, over_budget: bool = False
    ) -> ProviderFailure | None:
        """Why the plan would pass this provider over now, or None: the one rule the router and /readyz share.

        `over_budget` is what a report of the ledger says; the router learns it by reserving instead.
        """
        health = self._health[provider]
        skip = unavailable(self._clients[provider], health.breaker, instruction, over_budget, health.rate_limited_for())
        return skip or self._quality.skip(model, provider)

    def steps(self, request: ScoreRequest, failures: list[ProviderFailure], findings: Findings | None = None) -> list[Step]:
        """Steps 1 and 2 of the plan: the model's own providers, then its fallback models'; those
        that cannot take the request are noted as skipped. `findings`: what planning the request's
        cache group found just before, reused."""
        steps = []
        for model in (request.model, *self._config.models[request.model].fallback_models):
            for provider in self._plan_order(model, findings):  # failing canaries last
                skip = self._why_not(model, provider, request.missing.instruction, findings)
                if skip is None:
                    steps.append(self.step(request, model, self._clients[provider], findings=findings))
                    continue
                if skip.kind in ("breaker_open", "quality", "rate_limited"):
                    self._guard.note_skip(skip)
                else:
                    note_attempt(skip.provider, skip.kind, 0.0)  # the request log lists every provider passed over
                failures.append(skip)
        return steps

    def step(
        self, request: ScoreRequest, model: str, client: ProviderClient, panic: bool = False,
        findings: Findings | None = None,
    ) -> Step:
        group, scale = self._placement(model, client.name, findings)
        whole = model != request.model or group != request.group
        return Step(model, client, group, whole=whole, panic=panic, scale=scale)

    def panic_step(self, request: ScoreRequest, failures: Sequence[ProviderFailure]) -> Step | None:
        """Step 3: when no provider was called and open breakers kept some out, the one opened first.

        Refusing would turn a short joint outage into one as long as the breakers' cool-down;
        letting one provider through finds out at once whether it has recovered, and a failure
        opens its breaker again, so the next request tries the other one.
        """
        if any(not failure.skipped for failure in failures):
            return None  # a provider was called and failed: this is no breaker blackout
        model = request.model
        refused = {failure.provider for failure in failures if failure.kind == "breaker_open"}
        for candidate_model in (model, *self._config.models[model].fallback_models):
            providers = [p for p in self._config.models[candidate_model].fallback if p in refused]
            target = first_opened(providers, self._health)
            if target is not None:
                return self.step(request, candidate_model, self._clients[target], panic=True)
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


def unavailable(
    client: ProviderClient, breaker: CircuitBreaker, instruction: str | None, over_budget: bool = False,
    rate_limited_for: float = 0.0,
) -> ProviderFailure | None:
    """Why a provider cannot be called now, whatever the model: its config, key, rate limit, breaker or budget."""
    reason = client.unusable_reason(instruction)
    if reason is not None:
        return ProviderFailure(client.name, reason, kind="unusable")
    if rate_limited_for > 0:
        return ProviderFailure(client.name, f"rate limited for {rate_limited_for:.1f}s more (its 429's Retry-After)",
                               kind="rate_limited")
    if breaker.state == "open":
        return ProviderFailure(client.name, "circuit open after repeated failures", kind="breaker_open")
    if over_budget:
        return ProviderFailure(client.name, "budget exhausted", kind="budget")
    return None


def first_opened(providers: Sequence[str], health: HealthBoard) -> str | None:
    """Of these providers, the one whose breaker opened first and is not closed again; the panic target."""
    opened = [
        (status.opened_at, provider)
        for provider in providers
        if (status := health[provider].breaker.status()).state != "closed" and status.opened_at is not None
    ]
    return min(opened)[1] if opened else None
