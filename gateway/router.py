"""Which provider scores a request: the model's fallback order, first usable answer wins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.config import GatewayConfig
from gateway.errors import AllProvidersFailed, ProviderFailure, UpstreamRejected
from gateway.models import ScoredPairs
from gateway.providers.client import ProviderClient


class Router:
    def __init__(self, config: GatewayConfig, clients: Mapping[str, ProviderClient]) -> None:
        self._config = config
        self._clients = clients

    async def score(
        self, model: str, queries: Sequence[str], documents: Sequence[str], instruction: str | None
    ) -> ScoredPairs:
        """Scores from the model's own providers, in its fallback order."""
        return await self._first_answer(model, [model], queries, documents, instruction, [])

    def has_fallback_models(self, model: str) -> bool:
        return bool(self._config.models[model].fallback_models)

    async def score_by_fallback_models(
        self,
        model: str,
        queries: Sequence[str],
        documents: Sequence[str],
        instruction: str | None,
        earlier: AllProvidersFailed,
    ) -> ScoredPairs:
        """Scores from the models ops allowed as a fallback, once the model's own providers failed."""
        fallback_models = self._config.models[model].fallback_models
        return await self._first_answer(model, fallback_models, queries, documents, instruction, list(earlier.failures))

    async def _first_answer(
        self,
        model: str,
        models: Sequence[str],
        queries: Sequence[str],
        documents: Sequence[str],
        instruction: str | None,
        failures: list[ProviderFailure],
    ) -> ScoredPairs:
        for scored_model in models:
            for provider in self._config.models[scored_model].fallback:
                client = self._clients[provider]
                reason = client.unusable_reason(instruction)
                if reason is not None:
                    failures.append(ProviderFailure(client.name, f"skipped: {reason}", skipped=True))
                    continue
                try:
                    scores, usage = await client.score(queries, documents, instruction)
                except ProviderFailure as failure:
                    if not failure.fallback_allowed:
                        raise UpstreamRejected(failure) from None
                    failures.append(failure)
                    continue
                return ScoredPairs(scores=scores, usage=usage, provider=client.name, model=scored_model)
        raise AllProvidersFailed(model, failures)
