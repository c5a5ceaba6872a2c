"""The plan table: for each model, the providers a request may try, worked out once per config
generation and quality-board version, not per request.

    Route       one provider of one model as the plan sees it: its client, the cache group its
                fresh scores go to and the map onto that group's scale (gateway.quality.groups),
                and the quality guard's word on it (passed over for good, or serving flagged)
    ModelPlan   a model's routes in plan order (passing, not judged yet, failing its canary), its
                reference, and the models it falls back to; one for the model as a whole, and one
                for each language of its canary a query's script names (Cyrillic, Han, ...)
    PlanTable   every model's ModelPlans, built again whenever the quality board has changed
                (a verdict, agreement, calibration, another reference: QualityBoard.version)

A query follows its language's plan only where the verdicts make the plans differ (a provider
that passes English and ranks Chinese like noise): `language_of` works a query's language out
only then, so a request to a model whose providers pass (or fail) alike in every language pays
nothing for it.

What changes from one request to the next (a breaker, a rate limit, a budget, the instruction a
provider kind cannot take) is not in the table: the request applies those live checks to the
routes it reads (gateway.scoring.plan).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import ProviderFailure
from gateway.providers.client import ProviderClient
from gateway.quality.calibration import Calibration
from gateway.quality.canary import script_of
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
    language: str | None  # the canary language it is the plan of; None: the model as a whole
    routes: tuple[Route, ...]  # in plan order: ops' fallback, passing before not judged before failing
    by_provider: dict[str, Route]
    reference: str | None
    # Whose group a request reads when no provider can be called now: the reference, else the first.
    default: Route
    fallback_models: tuple[str, ...]

    def signature(self) -> tuple[object, ...]:
        """What a request following this plan would be served by and cached in."""
        return tuple((r.provider, r.group, r.scale is not None, r.quality_skip is None) for r in self.routes)


class PlanTable:
    def __init__(self, parts: Parts, quality: QualityGuard) -> None:
        self._parts = parts
        self._quality = quality
        self._version = -1
        self._plans: dict[str, dict[str | None, ModelPlan]] = {}
        # script -> language of each model's canary; fixed for the generation
        self._scripts = {model: quality.scripts(model) for model in parts.config.models}
        self._telling: dict[str, dict[str, str]] = {}  # the same, only for models whose plans differ by language

    def plan(self, model: str, language: str | None = None) -> ModelPlan:
        if self._version != self._parts.board.version:
            self._build()
        plans = self._plans[model]
        return plans.get(language) or plans[None]

    def language_of(self, model: str, queries: Sequence[str]) -> str | None:
        """The canary language whose plan a request's queries follow; None when the model's plans
        are one in every language (the queries are not looked at), when a script names no language
        of the canary, or when the queries are of several: a batch mixing languages follows the
        model's pooled plan, so no query's scores go where another language's verdict put them."""
        if self._version != self._parts.board.version:
            self._build()
        scripts = self._telling.get(model)
        if not scripts:
            return None
        languages = {scripts.get(script_of(query)) for query in set(queries)}
        return languages.pop() if len(languages) == 1 else None

    def _build(self) -> None:
        self._plans, self._telling = {}, {}
        for model in self._parts.config.models:
            languages = sorted(set(self._scripts[model].values()))
            plans = self._plans[model] = {language: self._model_plan(model, language) for language in (None, *languages)}
            overall = plans[None].signature()
            if any(plans[language].signature() != overall for language in languages):
                self._telling[model] = self._scripts[model]
        # Taken after building, which awaits nothing: no change can fall in between.
        self._version = self._parts.board.version

    def _model_plan(self, model: str, language: str | None) -> ModelPlan:
        config = self._parts.config.models[model]
        routes = tuple(self._route(model, provider, language) for provider in self._quality.plan_order(model, language))
        by_provider = {route.provider: route for route in routes}
        reference = self._quality.reference(model)
        default = by_provider[reference or config.fallback[0]]
        return ModelPlan(model, language, routes, by_provider, reference, default, tuple(config.fallback_models))

    def _route(self, model: str, provider: str, language: str | None) -> Route:
        client = self._parts.clients[provider]
        group, scale = self._quality.groups.placement(model, provider, language)
        return Route(model, provider, client, group, scale, self._quality.skip(model, provider, language),
                     client.unusable_reason(None), client.unusable_reason("an instruction"))
