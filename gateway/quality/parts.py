"""The parts one config generation's planning, provider calls and quality checks share.

Built once per generation (gateway.runtime.Generation) and handed whole to the quality guard,
the prober, the shadower and the router, instead of the same collaborators one by one to each.
What outlives a generation (the health board, the quality board, the verdict store) is the
process's; the parts only point at it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.config import GatewayConfig
from gateway.observability.metrics import GatewayMetrics
from gateway.providers.client import ProviderClient
from gateway.quality.background import Background
from gateway.quality.board import QualityBoard
from gateway.quality.groups import scoring_identity
from gateway.quality.verdict_store import VerdictStore
from gateway.resilience.guarded_call import GuardedCall
from gateway.resilience.health import HealthBoard


@dataclass(frozen=True, slots=True)
class Parts:
    config: GatewayConfig
    clients: Mapping[str, ProviderClient]
    calls: GuardedCall  # every provider call goes through it: budget, breaker, retries, time bounds
    health: HealthBoard  # breakers, latency, rate limits: per provider, kept across reloads
    metrics: GatewayMetrics
    board: QualityBoard  # canary verdicts and agreement: per model and scoring identity, kept across reloads
    verdicts: VerdictStore  # the board's evidence shared with the fleet (Redis), or nothing shared
    rng: random.Random
    background: Background = field(default_factory=Background)  # probe loops and shadow calls
    # Per provider: a digest of what scores (gateway.quality.groups.scoring_identity).
    identities: Mapping[str, str] = field(init=False)

    def __post_init__(self) -> None:
        identities = {name: scoring_identity(provider) for name, provider in self.config.providers.items()}
        object.__setattr__(self, "identities", identities)

    def plannable(self, provider: str) -> bool:
        """Whether the provider could be called at all in this generation (its key, its config)."""
        return self.clients[provider].unusable_reason(None) is None

    def reference(self, model: str) -> str | None:
        """The model's reference: the first provider in its fallback that passes its canary (QualityBoard.reference)."""
        return self.board.reference(model, self.config.models[model].fallback, self.plannable)
