"""The plan table: for each model, the providers a request may try, worked out once per config
generation and quality-board version, not per request.

    Route       one provider of one model as the plan sees it: its client, the cache group its
                fresh scores go to and the map onto that group's scale (gateway.quality.groups),
                and the quality guard's word on it (passed over for good, or serving flagged)
    ModelPlan   a model's routes in plan order (passing, not judged yet, failing its canary), its
                reference, and the models it falls back to
    PlanTable   every model's ModelPlan, built again whenever the quality board has changed
                (a verdict, agreement, calibration, another reference: QualityBoard.version)

What changes from one request to the next (a breaker, a rate limit, a budget, the instruction a
provider kind cannot take) is not in the table: the request applies those live checks to the
routes it reads (gateway.scoring.plan).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import ProviderFailure
from gateway.providers.client import ProviderClient
from gateway.quality.calibration import Calibration
from gateway.quality.guard import QualityGuard
from gateway.quality.parts import Parts


@dataclass(frozen=True, slots=True)
class Route:
    model: str
    provider: str
    client: ProviderClient
    group: str  # the cache group its fresh scores are written to
    scale: Calibration | None  # maps its scores onto the group's scale; None: taken as they are
    # Failing its canary and never to serve, whatever else can answer (QualityGuard.skip).
    quality_skip: ProviderFailure | None
    # Why it cannot be called in this generation (disabled, no key), without an instruction and with one.
    unusable: str | None
    unusable_with_instruction: str | None


@dataclass(frozen=True, slots=True)
class ModelPlan:
    model: str
    routes: tuple[Route, ...]  # in plan order: ops' fallback, passing before not judged before failing
    by_provider: dict[str, Route]
    reference: str | None
    # Whose group a request reads when no provider can be called now: the reference, else the first.
    default: Route
    fallback_models: tuple[str, ...]


class PlanTable:
    def __init__(self, parts: Parts, quality: QualityGuard) -> None:
        self._parts = parts
        self._quality = quality
        self._version = -1
        self._plans: dict[str, ModelPlan] = {}

    def plan(self, model: str) -> ModelPlan:
        if self._version != self._parts.board.version:
            self._build()
        return self._plans[model]

    def _build(self) -> None:
        self._plans = {name: self._model_plan(name) for name in self._parts.config.models}
        # Taken after building, which awaits nothing: no change can fall in between.
        self._version = self._parts.board.version

    def _model_plan(self, model: str) -> ModelPlan:
        config = self._parts.config.models[model]
        routes = tuple(self._route(model, provider) for provider in self._quality.plan_order(model))
        by_provider = {route.provider: route for route in routes}
        reference = self._quality.reference(model)
        default = by_provider[reference or config.fallback[0]]
        return ModelPlan(model, routes, by_provider, reference, default, tuple(config.fallback_models))

    def _route(self, model: str, provider: str) -> Route:
        client = self._parts.clients[provider]
        group, scale = self._quality.groups.placement(model, provider)
        return Route(model, provider, client, group, scale, self._quality.skip(model, provider),
                     client.unusable_reason(None), client.unusable_reason("an instruction"))
