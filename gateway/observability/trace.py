"""The providers one request tried, gathered without threading a list through every call.

A ContextVar is request-scoped, not global state: the handler sets a fresh list, and the tasks
the router starts for that request inherit it (hedged calls included).
"""

from __future__ import annotations

from contextvars import ContextVar

from gateway.observability.logs import ProviderAttempt

_attempts: ContextVar[list[ProviderAttempt] | None] = ContextVar("provider_attempts", default=None)


def start_trace() -> list[ProviderAttempt]:
    attempts: list[ProviderAttempt] = []
    _attempts.set(attempts)
    return attempts


def note_attempt(provider: str, outcome: str, seconds: float, panic: bool = False) -> None:
    attempts = _attempts.get()
    if attempts is not None:
        attempts.append(ProviderAttempt(provider, outcome, seconds * 1000, panic))
