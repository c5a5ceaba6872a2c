"""The budget limits one config sets, and their scopes as people read them.

The guard reserves against them, and /admin/spend, /status and /metrics report them: one
source, so what is enforced and what is shown cannot drift apart.
"""

from __future__ import annotations

from gateway.budget.base import GATEWAY_SCOPE, Limit
from gateway.config import BudgetConfig, GatewayConfig, ProviderConfig

# '@' keeps these scopes apart from any provider name, as GATEWAY_SCOPE is.
CLIENT_SCOPE_PREFIX = "@client:"
TEAM_SCOPE_PREFIX = "@team:"


def provider_limit(name: str, provider: ProviderConfig) -> Limit:
    return Limit(name, provider.budget.daily_usd, provider.budget.monthly_usd)


def gateway_limit(config: GatewayConfig) -> Limit:
    return Limit(GATEWAY_SCOPE, config.budget.daily_usd, config.budget.monthly_usd)


def client_limit(name: str, budget: BudgetConfig) -> Limit:
    return Limit(CLIENT_SCOPE_PREFIX + name, budget.daily_usd, budget.monthly_usd)


def team_limit(name: str, budget: BudgetConfig) -> Limit:
    return Limit(TEAM_SCOPE_PREFIX + name, budget.daily_usd, budget.monthly_usd)


def every_limit(config: GatewayConfig) -> list[Limit]:
    """Each provider's budget and the gateway's."""
    return [*(provider_limit(name, p) for name, p in config.providers.items()), gateway_limit(config)]


def every_client_limit(config: GatewayConfig) -> list[Limit]:
    """Each configured client's budget, then each team's (tracked when they set none)."""
    return [*(client_limit(name, c.budget) for name, c in config.clients.items()),
            *(team_limit(name, t.budget) for name, t in config.teams.items())]


def is_provider_scope(scope: str) -> bool:
    return not scope.startswith("@")


def is_payer_scope(scope: str) -> bool:
    """A client's or a team's: the request's own, not what serves it."""
    return scope.startswith((CLIENT_SCOPE_PREFIX, TEAM_SCOPE_PREFIX))


def scope_label(scope: str) -> str:
    """A ledger scope as people read it: the provider's name, "gateway", "client NAME" or "team NAME"."""
    if scope == GATEWAY_SCOPE:
        return "gateway"
    for prefix, label in ((CLIENT_SCOPE_PREFIX, "client "), (TEAM_SCOPE_PREFIX, "team ")):
        if scope.startswith(prefix):
            return label + scope.removeprefix(prefix)
    return scope
