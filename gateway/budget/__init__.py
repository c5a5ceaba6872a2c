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
from gateway.budget.limits import every_limit, gateway_limit, provider_limit, scope_label
from gateway.budget.memory import MemoryLedger
from gateway.budget.redis import RedisLedger

__all__ = [
    "GATEWAY_SCOPE",
    "BudgetAlert",
    "Ledger",
    "Limit",
    "MemoryLedger",
    "RedisLedger",
    "Refusal",
    "Reservation",
    "TokenEstimator",
    "WindowReport",
    "every_limit",
    "gateway_limit",
    "provider_limit",
    "scope_label",
    "unheld_reservation",
    "utc_now",
]
