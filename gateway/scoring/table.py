"""The plan table: for each model, the providers a request may try, worked out once per config
generation and quality-board version, not per request.

    Route       one provider of one model as the plan sees it: its client, the cache group its
                fresh scores go to and the map onto that group's scale (gateway.quality.groups),
                and the quality guard's word on it (passed over for good, or serving flagged)
    ModelPlan   a model's routes in plan order (passing, not judged yet, failing its canary), its
                reference, and the models it falls back to; one for the model as a whole, one for
                each language a query can be in (gateway.quality.languages: the canary's, and
                each script it has no line in), and one for a batch mixing languages
    PlanTable   every model's ModelPlans, built again whenever the quality board has changed
                (a verdict, agreement, calibration, another reference: QualityBoard.version)

A query follows its language's plan only where the verdicts or the agreement make the plans
differ (a provider that passes English and ranks Chinese like noise, or that was measured to
agree with the reference in English only): `language_of` works a query's language out only
then, so a request to a model whose providers pass (or fail, or share) alike in every language
pays nothing for it.

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
from gateway.quality.groups import Sibling
from gateway.quality.guard import QualityGuard
from gateway.quality.languages import MIXED
from gateway.quality.parts import Parts


@dataclass(frozen=True, slots=True)
class Route:
    model: str
    provider: str
    client: ProviderClient
    group: str  # the cache group its fresh scores are written to
    sibling: Sibling | None  # where pairs its group lacks may be read: scores written before its verdict
    scale: Calibration | None  # maps its scores onto the group's scale; None: taken as they are
    # Failing its canary and never to serve, whatever else can answer (QualityGuard.skip).
    quality_skip: ProviderFailure | None
    # Why it cannot be called in this generation (disabled, no key), without an instruction and with one.
    unusable: str | None
    unusable_with_instruction: str | None


@dataclass(frozen=True, slots=True)
class ModelPlan:
    model: str
    language: str | None  # the language it is the plan of (MIXED: several); None: the model as a whole
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
        self._telling: set[str] = set()  # models whose plans differ by language

    def plan(self, model: str, language: str | None = None) -> ModelPlan:
        if self._version != self._parts.board.version:
            self._build()
        plans = self._plans[model]
        return plans.get(language) or plans[None]

    def language_of(self, model: str, queries: Sequence[str]) -> str | None:
        """The language whose plan a request's queries follow; None when the model's plans are one
        in every language (the queries are not looked at). A batch mixing languages, or in one
        that cannot be told, is MIXED: it shares only what shares in each language, so no
        query's scores go where another language's verdict or agreement put them."""
        if self._version != self._parts.board.version:
            self._build()
        if model not in self._telling:
            return None
        return self._quality.languages[model].of_batch(set(queries))

    def _build(self) -> None:
        self._plans, self._telling = {}, set()
        for model in self._parts.config.models:
            languages = (*self._quality.languages[model].languages, MIXED)
            plans = self._plans[model] = {language: self._model_plan(model, language) for language in (None, *languages)}
            overall = plans[None].signature()
            if any(plans[language].signature() != overall for language in languages):
                self._telling.add(model)
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
        groups = self._quality.groups
        group, scale = groups.placement(model, provider, language)
        return Route(model, provider, client, group, groups.sibling(model, provider, group, language), scale,
                     self._quality.skip(model, provider, language),
                     client.unusable_reason(None), client.unusable_reason("an instruction"))
