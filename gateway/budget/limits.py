"""The budget limits one config sets, and their scopes as people read them.

The guard reserves against them, and /admin/spend, /status and /metrics report them: one
source, so what is enforced and what is shown cannot drift apart.
"""

from __future__ import annotations

from gateway.budget.base import GATEWAY_SCOPE, Limit
from gateway.config import GatewayConfig, ProviderConfig


def provider_limit(name: str, provider: ProviderConfig) -> Limit:
    return Limit(name, provider.budget.daily_usd, provider.budget.monthly_usd)


def gateway_limit(config: GatewayConfig) -> Limit:
    return Limit(GATEWAY_SCOPE, config.budget.daily_usd, config.budget.monthly_usd)


def every_limit(config: GatewayConfig) -> list[Limit]:
    """Each provider's budget and the gateway's."""
    return [*(provider_limit(name, p) for name, p in config.providers.items()), gateway_limit(config)]


def scope_label(scope: str) -> str:
    """A ledger scope as people read it: the provider's name, or "gateway"."""
    return "gateway" if scope == GATEWAY_SCOPE else scope
