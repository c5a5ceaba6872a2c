"""The Redis ledger: one budget shared by every gateway instance, surviving restarts.

Layout, all under the Cluster hash tag {budget} so the multi-key scripts run on one node:
    rb:{budget}:t:<window>:<scope>   hash: spent, reserved (nano-dollars), tokens, warned
    rb:{budget}:h:<window>:<scope>   sorted set of holds: "<id>:<amount>" scored by expiry (ms)
where <window> is "2025-01-31" or "2025-01". Day keys expire five weeks after their day ends,
month keys a hundred days after theirs. One Lua script per reserve and one per settle/release
(gateway/budget/lua.py), and a read-only one per report. Hold expiries and windows follow this
process's clock, so the instances' clocks should agree to well within a hold time (NTP does).

The ledger never fails a request. Every call is bounded by a short timeout; on any Redis failure
a warning is logged at most once per interval, Redis is left alone for a short back-off, and
budgets are enforced against an in-process MemoryLedger until Redis answers again. That fallback
starts from the spend last seen in Redis, but while it is in charge the limits hold per process:
N instances may together spend up to N times what remains. Spend recorded during an outage stays
in the process (it still counts there) and is not written to Redis later. A reserve that timed out
after Redis ran it leaves a hold there that counts until it expires.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from gateway.budget import lua
from gateway.budget.base import (
    WARN_FRACTION,
    BudgetAlert,
    Clock,
    Limit,
    Refusal,
    Reservation,
    Window,
    WindowReport,
    aware_utc,
    binding_refusal,
    check_limits,
    check_reserve,
    labels,
    log_alerts,
    nano,
    utc_now,
    warn_line,
    windows_of,
)
from gateway.budget.memory import MemoryLedger
from gateway.redisio.client import REDIS_FAILURES
from gateway.redisio.commands import Commands, Script, commands_for, run_scripts
from gateway.redisio.outage import RedisOutage

WARM_CONNECTIONS = 8

log = logging.getLogger("gateway.budget")

KEY_PREFIX = "rb:{budget}:"
# Every window's totals and its holds expired by ARGV[1] (ms), read at one instant: a script and
# not a MULTI/EXEC pipeline, which redis-py's async cluster client runs a thread per command for.
# KEYS: as for lua.RESERVE. Returns, per window, {spent, reserved, tokens} then {expired holds}.
_REPORT = """
local result = {}
for i = 1, #KEYS / 2 do
  table.insert(result, redis.call('HMGET', KEYS[2 * i - 1], 'spent', 'reserved', 'tokens'))
  table.insert(result, redis.call('ZRANGEBYSCORE', KEYS[2 * i], '-inf', ARGV[1]))
end
return result
"""
_RESERVE_SCRIPT, _SETTLE_SCRIPT, _REPORT_SCRIPT = Script(lua.RESERVE), Script(lua.SETTLE), Script(_REPORT)


def window_keys(window: Window) -> tuple[str, str]:
    """The window's totals hash and its holds sorted set."""
    return f"{KEY_PREFIX}t:{window.label}:{window.scope}", f"{KEY_PREFIX}h:{window.label}:{window.scope}"


class RedisLedger:
    def __init__(
        self,
        commands: Commands,
        timeout_seconds: float,
        clock: Clock = utc_now,
        warn_fraction: float = WARN_FRACTION,
        retry_after_seconds: float = 1.0,
        warn_interval_seconds: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
        failures_before_backoff: int = 3,
    ) -> None:
        self._redis = commands
        self._timeout = timeout_seconds
        self._clock = clock
        self._warn_fraction = warn_fraction
        self._outage = RedisOutage(
            log, "redis budget ledger", "enforcing budgets per process", monotonic,
            retry_after_seconds, warn_interval_seconds, failures_before_backoff,
        )
        self.fallback = MemoryLedger(clock, warn_fraction)

    @classmethod
    def from_url(cls, url: str, timeout_seconds: float, max_connections: int = 32, **options: Any) -> RedisLedger:
        return cls(commands_for(url, timeout_seconds, max_connections), timeout_seconds, **options)

    async def start(self) -> None:
        await self._redis.warm_up(WARM_CONNECTIONS)

    @property
    def available(self) -> bool:
        return self._outage.available

    async def reserve(self, limits: Sequence[Limit], amount_usd: float, hold_seconds: float) -> Reservation | Refusal:
        check_reserve(limits, amount_usd, hold_seconds)
        if self.available:
            now = aware_utc(self._clock)
            day, month = labels(now)
            windows = windows_of(limits, day, month)
            reservation = Reservation(
                uuid.uuid4().hex, tuple(limits), amount_usd, day, month, now + timedelta(seconds=hold_seconds)
            )
            amount = nano(amount_usd)
            args: list[int | str] = [_ms(now), _ms(reservation.expires_at), _member(reservation), amount]
            for window in windows:
                args += [-1 if window.limit_nano is None else window.limit_nano, _ttl(window, now)]
            try:
                reply = await self._run(_RESERVE_SCRIPT, _keys(windows), args)
            except REDIS_FAILURES as exc:
                self._outage.failed("reserve", exc)
            else:
                self._outage.succeeded()
                if reply[0] == 1:
                    self.fallback.mirror_shared_spend(windows, [int(spent) for spent in reply[1:]])
                    return reservation
                over = reply[1:]
                return binding_refusal([
                    windows[int(over[i]) - 1].refusal(int(over[i + 1]), int(over[i + 2]), amount)
                    for i in range(0, len(over), 3)
                ])
        made = await self.fallback.reserve(limits, amount_usd, hold_seconds)
        return dataclasses.replace(made, fallback=True) if isinstance(made, Reservation) else made

    async def settle(self, reservation: Reservation, cost_usd: float, tokens: int) -> tuple[BudgetAlert, ...]:
        cost, tokens = max(0, nano(cost_usd)), max(0, tokens)
        if not reservation.fallback and self.available:
            windows = windows_of(reservation.limits, reservation.day, reservation.month)
            lines = [warn_line(window, self._warn_fraction) if cost > 0 else None for window in windows]
            try:
                spent = await self._run_settle(reservation, windows, cost, tokens, lines)
            except REDIS_FAILURES as exc:
                self._outage.failed("settle", exc)
            else:
                self._outage.succeeded()
                self.fallback.mirror_shared_spend(windows, spent[: len(windows)])
                alerts = tuple(windows[i - 1].alert(spent[i - 1], self._warn_fraction) for i in spent[len(windows):])
                log_alerts(alerts)
                return alerts
        # The spend still counts here; a hold left in Redis expires on its own.
        return await self.fallback.settle(reservation, cost_usd, tokens)

    async def release(self, reservation: Reservation) -> None:
        if reservation.fallback:
            await self.fallback.release(reservation)
        elif self.available:
            windows = windows_of(reservation.limits, reservation.day, reservation.month)
            try:
                await self._run_settle(reservation, windows, 0, 0, [None] * len(windows))
            except REDIS_FAILURES as exc:
                self._outage.failed("release", exc)  # the hold expires on its own
            else:
                self._outage.succeeded()

    async def report(self, limits: Sequence[Limit]) -> list[WindowReport]:
        check_limits(limits)
        if self.available:
            now = aware_utc(self._clock)
            windows = windows_of(limits, *labels(now))
            try:
                figures = await self._read(windows, now)
            except REDIS_FAILURES as exc:
                self._outage.failed("report", exc)
            else:
                self._outage.succeeded()
                return figures
        return await self.fallback.report(limits)

    async def ping(self) -> bool:
        return await self._redis.ping(self._timeout)

    async def close(self) -> None:
        await self._redis.aclose()
        await self.fallback.close()

    async def _run_settle(
        self, reservation: Reservation, windows: list[Window], cost: int, tokens: int, lines: list[int | None]
    ) -> list[int]:
        args: list[int | str] = [_member(reservation), -nano(reservation.amount_usd), cost, tokens]
        now = aware_utc(self._clock)
        for window, line in zip(windows, lines):
            args += [_ttl(window, now), -1 if line is None else line]
        reply = await self._run(_SETTLE_SCRIPT, _keys(windows), args)
        return [int(value) for value in reply]

    async def _run(self, script: Script, keys: list[str], args: list[int | str]) -> Any:
        async with asyncio.timeout(self._timeout):
            [reply] = await run_scripts(self._redis, [(script, keys, args)])
        return reply

    async def _read(self, windows: list[Window], now: datetime) -> list[WindowReport]:
        replies = await self._run(_REPORT_SCRIPT, _keys(windows), [_ms(now)])
        reports = []
        for i, window in enumerate(windows):
            spent, reserved, tokens = (int(value or 0) for value in replies[2 * i])
            # Expired holds no longer count even before a script has purged them.
            reserved -= sum(int(member.rsplit(b":", 1)[1]) for member in replies[2 * i + 1])
            reports.append(window.report(spent, max(0, reserved), tokens))
        return reports


def _keys(windows: Sequence[Window]) -> list[str]:
    return [key for window in windows for key in window_keys(window)]


def _member(reservation: Reservation) -> str:
    return f"{reservation.id}:{nano(reservation.amount_usd)}"


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _ttl(window: Window, now: datetime) -> int:
    # Relative to this process's clock, not an absolute EXPIREAT, so a test clock in the past works too.
    return max(1, math.ceil((window.keep_until - now).total_seconds()))
