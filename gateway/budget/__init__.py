"""Spend budgets: per-provider and gateway-wide, over UTC days and months, reserved before each call."""

from gateway.budget.base import (
    GATEWAY_SCOPE,
    BudgetAlert,
    Ledger,
    Limit,
    Refusal,
    Reservation,
    WindowReport,
    unheld_reservation,
    utc_now,
)
from gateway.budget.estimator import TokenEstimator
from gateway.budget.limits import (
    CLIENT_SCOPE_PREFIX,
    TEAM_SCOPE_PREFIX,
    client_limit,
    every_client_limit,
    every_limit,
    gateway_limit,
    is_payer_scope,
    is_provider_scope,
    provider_limit,
    scope_label,
    team_limit,
)
from gateway.budget.memory import MemoryLedger
from gateway.budget.redis import RedisLedger

__all__ = [
    "CLIENT_SCOPE_PREFIX",
    "GATEWAY_SCOPE",
    "TEAM_SCOPE_PREFIX",
    "BudgetAlert",
    "Ledger",
    "Limit",
    "MemoryLedger",
    "RedisLedger",
    "Refusal",
    "Reservation",
    "TokenEstimator",
    "WindowReport",
    "client_limit",
    "every_client_limit",
    "every_limit",
    "gateway_limit",
    "is_payer_scope",
    "is_provider_scope",
    "provider_limit",
    "scope_label",
    "team_limit",
    "unheld_reservation",
    "utc_now",
]
