"""/admin/*: ops endpoints, off unless [server] admin_key_env names a set env var."""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.budget import (
    CLIENT_SCOPE_PREFIX,
    GATEWAY_SCOPE,
    TEAM_SCOPE_PREFIX,
    WindowReport,
    client_limit,
    every_client_limit,
    every_limit,
    is_provider_scope,
)
from gateway.config import ConfigError
from gateway.errors import ClientError, NotFound, Unauthorized
from gateway.web.edge import LIVE, json_response


class ReloadRefused(ClientError):
    status = 422
    error_type = "invalid_config"


class WrongKeyDelay:
    """Wrong admin keys wait before their 401, twice as long for each one in a row (up to a cap):
    a guesser gets a few tries a minute, while the right key never waits."""

    def __init__(self, first_seconds: float = 0.05, cap_seconds: float = 5.0, forget_after_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._first = first_seconds
        self._cap = cap_seconds
        self._forget_after = forget_after_seconds
        self._clock = clock
        self._in_a_row = 0
        self._last = -math.inf

    def next_wait(self) -> float:
        now = self._clock()
        if now - self._last > self._forget_after:
            self._in_a_row = 0
        self._in_a_row += 1
        self._last = now
        return min(self._cap, self._first * 2.0 ** (self._in_a_row - 1))


WRONG_ADMIN_KEYS = web.AppKey("wrong_admin_keys", WrongKeyDelay)


async def require_admin(request: web.Request) -> None:
    generation = request.app[LIVE].current
    key = generation.secrets.admin_key
    if key is None:
        name = generation.config.server.admin_key_env
        if name is None:
            raise NotFound("admin endpoints are off: set [server] admin_key_env to an env var holding a key")
        # Named but empty is the usual slip (`export GATEWAY_ADMIN_KEY=` in a script): say which.
        raise NotFound(f"admin endpoints are off: ${name} ([server] admin_key_env) is empty or not set")
    given = request.headers.get("Authorization", "")
    # Constant-time: the comparison must not tell an attacker how much of the key matched.
    if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
        await asyncio.sleep(request.app[WRONG_ADMIN_KEYS].next_wait())
        raise Unauthorized("admin endpoints need Authorization: Bearer <admin key>")


async def reload(request: web.Request) -> web.Response:
    await require_admin(request)
    live = request.app[LIVE]
    try:
        reloaded = await live.reload()
    except (ConfigError, FileNotFoundError) as exc:
        raise ReloadRefused(f"config not reloaded; the running config stays: {exc}") from None
    live.on_admin_reload()  # the other workers skip it too when they have this file already
    return json_response({
        # "unchanged": the file (and the secrets it names) was loaded already, by the watcher say.
        "status": "unchanged" if reloaded.unchanged else "reloaded",
        "loaded_at": live.current.loaded_at,
        "models": {name: model.fallback for name, model in reloaded.config.models.items()},
        "needs_restart": reloaded.needs_restart,
    })


async def spend(request: web.Request) -> web.Response:
    """Per provider, client and team, and gateway-wide, today and this month: tokens, USD (reported
    and estimated), budget, in flight; and whether the figures are the shared ledger's or this
    process's alone."""
    await require_admin(request)
    live = request.app[LIVE]
    config = live.config
    created = [record for record in live.shared.client_store.records() if record.name not in config.clients]
    reports = await live.shared.ledger.report([
        *every_limit(config), *every_client_limit(config),
        *(client_limit(record.name, record.settings.budget) for record in created),
    ])
    providers: dict[str, dict[str, Any]] = {name: {} for name in config.providers}
    clients: dict[str, dict[str, Any]] = {name: {"team": client.team} for name, client in config.clients.items()}
    clients.update({record.name: {"team": record.settings.team} for record in created})
    teams: dict[str, dict[str, Any]] = {name: {} for name in config.teams}
    gateway: dict[str, dict[str, Any]] = {}
    for report in reports:
        _scope_figures(report.scope, providers, clients, teams, gateway)["today" if report.period == "day" else "month"] = (
            _window(report))
    for name in config.providers:
        providers[name]["chars_per_token"] = round(live.shared.health.billing_estimator(name).chars_per_token, 3)
    return json_response({"providers": providers, "gateway": gateway, "clients": clients, "teams": teams,
                          "ledger": _ledger_state(reports)})


def _scope_figures(
    scope: str, providers: dict[str, dict[str, Any]], clients: dict[str, dict[str, Any]],
    teams: dict[str, dict[str, Any]], gateway: dict[str, Any],
) -> dict[str, Any]:
    """Where a ledger scope's windows go in /admin/spend's answer."""
    if scope == GATEWAY_SCOPE:
        return gateway
    if scope.startswith(CLIENT_SCOPE_PREFIX):
        return clients[scope.removeprefix(CLIENT_SCOPE_PREFIX)]
    if scope.startswith(TEAM_SCOPE_PREFIX):
        return teams[scope.removeprefix(TEAM_SCOPE_PREFIX)]
    return providers[scope]


def _window(report: WindowReport) -> dict[str, Any]:
    return {
        "window": report.window,
        "tokens": report.tokens,
        "usd": round(report.spent_usd, 9),
        "reported": {"tokens": report.reported_tokens, "usd": round(report.reported_usd, 9)},
        "estimated": {"tokens": report.estimated_tokens, "usd": round(report.estimated_usd, 9)},
        "budget_usd": report.limit_usd,
        "remaining_usd": None if report.remaining_usd is None else round(report.remaining_usd, 9),
        "reserved_usd": round(report.reserved_usd, 9),
        "pending_usd": round(report.pending_usd, 9),
        "pending_tokens": report.pending_tokens,
        "resets_at": report.resets_at.isoformat(),
    }


def _ledger_state(reports: list[WindowReport]) -> dict[str, Any]:
    """Where the figures come from, and what this process has not yet written to the shared ledger."""
    months = [report for report in reports if report.period == "month" and is_provider_scope(report.scope)]
    per_process = any(report.source == "process" for report in reports)
    return {
        "figures": "per_process" if per_process else "shared",
        # Every call counts in its provider's month once: their sum is what is pending.
        "pending_usd": round(sum(report.pending_usd for report in months), 9),
        "pending_tokens": sum(report.pending_tokens for report in months),
        # The shared ledger holds less than this process saw it hold (a Redis restarted without it).
        "partial": any(report.partial for report in reports),
    }
