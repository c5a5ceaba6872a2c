"""The Redis ledger: one budget shared by every gateway instance, surviving restarts.

Layout, all under the Cluster hash tag {budget} so the multi-key scripts run on one node:
    rb:{budget}:t:<window>:<scope>   hash: spent, reserved (nano-dollars), tokens, warned, and
                                     est_spent, est_tokens (the gateway's estimates among them)
    rb:{budget}:h:<window>:<scope>   sorted set of holds: "<id>:<amount>" scored by expiry (ms)
    rb:{budget}:w:<batch id>         a written-back batch of outage spend, so it counts once
where <window> is "2025-01-31" or "2025-01". Day keys expire five weeks after their day ends,
month keys a hundred days after theirs. One Lua script per reserve, one per settle/release and
one per write-back (gateway/budget/lua.py), and a read-only one per report. Hold expiries and
windows follow this process's clock, so the instances' clocks should agree to well within a
hold time (NTP does).

The ledger never fails a request. Every call is bounded by a short timeout (the reserve, which a
provider call waits for, by one of its own), and a reserve or settle runs only before its client
gives up on it (lua.IN_TIME), so a timed-out one has, but for a lost reply, done nothing. On any
Redis failure a warning is logged at most once per interval, Redis is left alone for a short back-off, and
budgets are enforced against an in-process MemoryLedger until Redis answers again. Every reply,
a granted reservation's, a refusal's or a settle's, copies the windows' spend into that fallback,
so it starts from the spend last seen in Redis; while it is in charge the limits hold per
process: N instances may together spend up to N times what remained. What a process settles
meanwhile is kept as a pending delta per window and written back once Redis answers again, in
one script per batch that records the batch's id, so a retry never counts it twice. A reserve
whose reply was lost after Redis ran it in time leaves a hold there that counts until it expires.

The ledger's Redis should keep what it is given: no eviction (`maxmemory-policy noeviction`) and
persistence (AOF). `start` reads both with CONFIG GET where allowed and warns when they are not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.budget import lua
from gateway.budget.base import (
    UNHELD_ID,
    WARN_FRACTION,
    BudgetAlert,
    Clock,
    Limit,
    Refusal,
    Reservation,
    Settled,
    Spend,
    Window,
    WindowReport,
    aware_utc,
    binding_refusal,
    check_limits,
    check_reserve,
    labels,
    log_alerts,
    nano,
    usd,
    utc_now,
    warn_line,
    windows_of,
)
from gateway.budget.memory import MemoryLedger
from gateway.redisio.client import REDIS_FAILURES
from gateway.redisio.commands import Commands, Script, commands_for, run_scripts
from gateway.redisio.outage import ProcessStalled, RedisOutage

WARM_CONNECTIONS = 8

log = logging.getLogger("gateway.budget")

KEY_PREFIX = "rb:{budget}:"
# Every window's totals and its holds expired by ARGV[1] (ms), read at one instant: a script and
# not a MULTI/EXEC pipeline, which redis-py's async cluster client runs a thread per command for.
# KEYS: as for lua.RESERVE. Returns, per window, {spent, reserved, tokens, est_spent, est_tokens}
# then {expired holds}.
_REPORT = """
local result = {}
for i = 1, #KEYS / 2 do
  table.insert(result, redis.call('HMGET', KEYS[2 * i - 1], 'spent', 'reserved', 'tokens', 'est_spent', 'est_tokens'))
  table.insert(result, redis.call('ZRANGEBYSCORE', KEYS[2 * i], '-inf', ARGV[1]))
end
return result
"""
_NOTHING = Settled(Spend(), Spend())  # what a release settles
_RESERVE_SCRIPT, _SETTLE_SCRIPT, _REPORT_SCRIPT = Script(lua.RESERVE), Script(lua.SETTLE), Script(_REPORT)
_WRITE_BACK_SCRIPT = Script(lua.WRITE_BACK)

# The share of a reserve's or settle's bound by which Redis must have run it: a reply ready that much
# before the client gives up reaches it unless the client itself stalls that long.
_IN_TIME_MARGIN = 0.2

# Any policy but noeviction may evict ledger keys under memory pressure: volatile-* ones too,
# since every ledger key has a TTL.
_KEEPS_KEYS = "noeviction"


@dataclass(frozen=True, slots=True)
class _Batch:
    """Pending deltas on their way to Redis under one id: a retry sends the same id."""

    id: str
    deltas: tuple[tuple[Window, Settled], ...]
    holds: tuple[Reservation, ...] = ()  # held in Redis: their holds end with the batch


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
        reserve_timeout_seconds: float | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._redis = commands
        self._timeout = timeout_seconds
        # A reserve stands before a provider call, so it gets a bound of its own, often shorter.
        self._reserve_timeout = timeout_seconds if reserve_timeout_seconds is None else reserve_timeout_seconds
        self._wall = wall  # Redis' clock is compared with it (IN_TIME), so never a test's fixed `clock`
        self._clock = clock
        self._warn_fraction = warn_fraction
        self._outage = RedisOutage(
            log, "redis budget ledger", "enforcing budgets per process", monotonic,
            retry_after_seconds, warn_interval_seconds, failures_before_backoff,
        )
        self.fallback = MemoryLedger(clock, warn_fraction, log_crossings=False)
        # Spend settled while Redis was away, per (scope, window label), not yet written back.
        self._pending: dict[tuple[str, str], tuple[Window, Settled]] = {}
        self._pending_holds: list[Reservation] = []  # held in Redis, settled or released meanwhile
        self._batch: _Batch | None = None  # sent, not yet acknowledged
        self._write_back_task: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, timeout_seconds: float, max_connections: int = 32, **options: Any) -> RedisLedger:
        return cls(commands_for(url, timeout_seconds, max_connections), timeout_seconds, **options)

    async def start(self) -> None:
        self._outage.lag.start()
        await self._redis.warm_up(WARM_CONNECTIONS)
        await self._warn_unless_durable()

    @property
    def available(self) -> bool:
        return self._outage.available

    async def reserve(
        self, limits: Sequence[Limit], amount_usd: float, hold_seconds: float, tokens: int = 0
    ) -> Reservation | Refusal:
        check_reserve(limits, amount_usd, hold_seconds)
        if self.available:
            now = aware_utc(self._clock)
            day, month = labels(now)
            windows = windows_of(limits, day, month)
            reservation = Reservation(
                uuid.uuid4().hex, tuple(limits), amount_usd, day, month, now + timedelta(seconds=hold_seconds),
                tokens=max(0, tokens),
            )
            amount = nano(amount_usd)
            args: list[int | str] = [_ms(now), _ms(reservation.expires_at), _member(reservation), amount]
            for window in windows:
                args += [-1 if window.limit_nano is None else window.limit_nano, _ttl(window, now)]
            try:
                reply = await self._run_in_time(_RESERVE_SCRIPT, _keys(windows), args, self._reserve_timeout)
            except REDIS_FAILURES as exc:
                self._outage.failed("reserve", exc)
            else:
                self._succeeded()
                # Granted or refused, the reply says what is spent: the fallback starts from it.
                count = len(windows)
                self.fallback.mirror_shared_spend(windows, [int(value) for value in reply[1 : 1 + 2 * count]])
                if reply[0] == 1:
                    return reservation
                over = reply[1 + 2 * count :]
                return binding_refusal([
                    windows[int(over[i]) - 1].refusal(int(over[i + 1]), int(over[i + 2]), amount)
                    for i in range(0, len(over), 3)
                ])
        made = await self.fallback.reserve(limits, amount_usd, hold_seconds, tokens)
        return dataclasses.replace(made, fallback=True) if isinstance(made, Reservation) else made

    async def settle(
        self, reservation: Reservation, cost_usd: float, tokens: int, *, estimated_usd: float = 0.0,
        estimated_tokens: int = 0,
    ) -> tuple[BudgetAlert, ...]:
        settled = Settled.of(cost_usd, tokens, estimated_usd, estimated_tokens)
        if not reservation.fallback and self.available:
            windows = windows_of(reservation.limits, reservation.day, reservation.month)
            lines = [warn_line(window, self._warn_fraction) if settled.total.nano > 0 else None for window in windows]
            try:
                spent = await self._run_settle(reservation, windows, settled, lines)
            except REDIS_FAILURES as exc:
                self._outage.failed("settle", exc)
            else:
                self._succeeded()
                self.fallback.mirror_shared_spend(windows, spent[: 2 * len(windows)])
                alerts = tuple(windows[i - 1].alert(spent[i - 1], self._warn_fraction) for i in spent[2 * len(windows) :])
                log_alerts(alerts)
                return alerts
        # The spend counts here at once, and goes to Redis when it answers, ending the hold left
        # there (else, found expired, it would be charged too).
        self._keep_pending(reservation, settled)
        await self.fallback.settle(
            reservation, cost_usd, tokens, estimated_usd=estimated_usd, estimated_tokens=estimated_tokens
        )
        if self.available:
            self._write_back_soon()
        return ()  # its windows' crossings are told by the write-back, once for every process

    async def release(self, reservation: Reservation) -> None:
        if reservation.fallback:
            await self.fallback.release(reservation)
            return
        if reservation.id == UNHELD_ID:
            return  # nothing was held
        if self.available:
            windows = windows_of(reservation.limits, reservation.day, reservation.month)
            try:
                await self._run_settle(reservation, windows, _NOTHING, [None] * len(windows))
            except REDIS_FAILURES as exc:
                self._outage.failed("release", exc)
            else:
                self._succeeded()
                return
        # Its hold in Redis ends with the next write-back: found expired, it would be charged.
        self._keep_pending(reservation, _NOTHING)
        if self.available:
            self._write_back_soon()

    async def report(self, limits: Sequence[Limit]) -> list[WindowReport]:
        """The shared figures while Redis answers, else this process's (`source == "process"`);
        either way with what is still pending write-back counted in, and shown apart."""
        check_limits(limits)
        now = aware_utc(self._clock)
        windows = windows_of(limits, *labels(now))
        if self.available:
            await self._write_back_now()
        if self.available:
            try:
                figures = await self._read(windows, now)
            except REDIS_FAILURES as exc:
                self._outage.failed("report", exc)
            else:
                self._succeeded()
                figures = [self._partial_or(window, report) for window, report in zip(windows, figures)]
                for window, report in zip(windows, figures):
                    self.fallback.mirror_shared_report(window, report)
                return [self._with_pending(window, report, add=True) for window, report in zip(windows, figures)]
        reports = await self.fallback.report(limits)
        return [self._with_pending(window, report, add=False) for window, report in zip(windows, reports)]

    @property
    def pending(self) -> dict[tuple[str, str], Spend]:
        """Spend settled while Redis was away and not yet written back, per (scope, window label)."""
        pending: dict[tuple[str, str], Spend] = {}
        for window, settled in self._pending_deltas():
            key = (window.scope, window.label)
            pending[key] = pending.get(key, Spend()) + settled.total
        return pending

    async def ping(self) -> bool:
        return await self._redis.ping(self._timeout)

    async def close(self) -> None:
        # A process stopped soon after an outage still writes back what it spent meanwhile.
        if self.available:
            await self._write_back_now()
        if self._write_back_task is not None:
            self._write_back_task.cancel()
        await self._redis.aclose()
        await self.fallback.close()

    def _succeeded(self) -> None:
        self._outage.succeeded()
        self._write_back_soon()

    def _keep_pending(self, reservation: Reservation, settled: Settled) -> None:
        for window in windows_of(reservation.limits, reservation.day, reservation.month):
            key = (window.scope, window.label)
            kept = self._pending.get(key)
            self._pending[key] = (window, settled if kept is None else kept[1] + settled)
        if not reservation.fallback and reservation.id != UNHELD_ID:
            self._pending_holds.append(reservation)  # held in Redis: the write-back ends its hold

    def _pending_deltas(self) -> list[tuple[Window, Settled]]:
        return [*(self._batch.deltas if self._batch else ()), *self._pending.values()]

    def _pending_in(self, window: Window) -> Settled:
        found = Settled(Spend(), Spend())
        for pending, settled in self._pending_deltas():
            if (pending.scope, pending.label) == (window.scope, window.label):
                found += settled
        return found

    def _partial_or(self, window: Window, report: WindowReport) -> WindowReport:
        """`report`, marked partial when Redis holds less than it was seen holding: it restarted
        without that spend, or is loading it still (or, rarely, a late settle took back more
        than it added: an expired hold's estimate above the call's real cost)."""
        seen = self.fallback.shared_seen(window)
        if nano(report.spent_usd) < seen.nano or report.tokens < seen.tokens:
            return dataclasses.replace(report, partial=True)
        return report

    def _with_pending(self, window: Window, report: WindowReport, add: bool) -> WindowReport:
        """`report` with this window's pending spend shown apart, and added in when it comes from Redis
        (the fallback's figures hold it already)."""
        pending = self._pending_in(window)
        partial = report.partial
        if add and pending.total.nano:
            spent = nano(report.spent_usd) + pending.total.nano
            reserved = nano(report.reserved_usd)
            estimated = Spend(nano(report.estimated_usd), report.estimated_tokens) + pending.estimated
            report = window.report(spent, reserved, report.tokens + pending.total.tokens, estimated)
        return dataclasses.replace(
            report, pending_usd=usd(pending.total.nano), pending_tokens=pending.total.tokens, partial=partial
        )

    def _write_back_soon(self) -> None:
        """Write the pending spend back in the background, unless that is under way already."""
        if not (self._pending or self._batch) or (self._write_back_task and not self._write_back_task.done()):
            return
        self._write_back_task = asyncio.ensure_future(self._write_back())

    async def _write_back_now(self) -> None:
        """Whatever is pending, written back before returning (or left pending if Redis fails again)."""
        running = self._write_back_task
        if running is not None and not running.done():
            await asyncio.shield(running)
        if self._pending or self._batch:
            await self._write_back()

    async def _write_back(self) -> None:
        while self.available and (self._batch is not None or self._pending):
            if self._batch is None:
                self._batch = _Batch(uuid.uuid4().hex, tuple(self._pending.values()), tuple(self._pending_holds))
                self._pending, self._pending_holds = {}, []
            batch = self._batch
            try:
                reply = await self._run(*self._write_back_call(batch))
            except REDIS_FAILURES as exc:
                self._outage.failed("write-back", exc)  # kept, and sent again under the same id
                return
            self._outage.succeeded()
            self._batch = None
            self._wrote_back(batch, [int(value) for value in reply])

    def _write_back_call(self, batch: _Batch) -> tuple[Script, list[str], list[int | str]]:
        now = aware_utc(self._clock)
        windows = [window for window, _ in batch.deltas]
        keys = [
            f"{KEY_PREFIX}w:{batch.id}", *(window_keys(window)[0] for window in windows),
            *(window_keys(window)[1] for window in windows),
        ]
        args: list[int | str] = [max(_ttl(window, now) for window in windows)]
        for window, settled in batch.deltas:
            line = warn_line(window, self._warn_fraction) if settled.total.nano > 0 else None
            args += [
                settled.total.nano, settled.total.tokens, settled.estimated.nano, settled.estimated.tokens,
                _ttl(window, now), -1 if line is None else line,
            ]
        index = {(window.scope, window.label): i for i, window in enumerate(windows, start=1)}
        for reservation in batch.holds:
            for window in windows_of(reservation.limits, reservation.day, reservation.month):
                args += [index[window.scope, window.label], _member(reservation)]
        return _WRITE_BACK_SCRIPT, keys, args

    def _wrote_back(self, batch: _Batch, reply: list[int]) -> None:
        count = len(batch.deltas)
        spent = reply[1 : 1 + count]
        for (window, settled), shared in zip(batch.deltas, spent):
            self.fallback.written_back(window, settled, shared)
        if reply[0] == 1:
            total = sum((settled.total for _, settled in batch.deltas), Spend())
            log.info(
                "redis budget ledger: wrote back what this process settled while it was away "
                "(%d windows, $%.6g in all windows together, %d tokens)", count, total.nano / 1e9, total.tokens,
            )
        alerts = tuple(batch.deltas[i - 1][0].alert(spent[i - 1], self._warn_fraction) for i in reply[1 + count :])
        log_alerts(alerts)

    async def _warn_unless_durable(self) -> None:
        """A warning when this Redis may lose spend: it evicts keys under memory pressure, or keeps nothing across a restart."""
        try:
            async with asyncio.timeout(self._timeout):
                replies = await self._redis.execute(
                    [("CONFIG", "GET", "maxmemory-policy"), ("CONFIG", "GET", "appendonly"), ("CONFIG", "GET", "save")]
                )
            policy, appendonly, save = (_config_value(reply) for reply in replies)
        except (*REDIS_FAILURES, ValueError) as exc:
            # Managed Redis often refuses CONFIG; a Redis that is down is told about by the calls.
            log.info("redis budget ledger: could not read its eviction and persistence settings (%s)", exc or type(exc).__name__)
            return
        if policy != _KEEPS_KEYS:
            log.warning(
                "redis budget ledger: maxmemory-policy is %s, so memory pressure may evict spend figures and "
                "budgets start over; give the ledger a Redis with maxmemory-policy noeviction ([budget] url)", policy,
            )
        if appendonly != "yes" and not save:
            log.warning(
                "redis budget ledger: no persistence (appendonly no, no save points), so a Redis restart "
                "starts every budget over; give the ledger a Redis with appendonly yes ([budget] url)",
            )

    async def _run_settle(
        self, reservation: Reservation, windows: list[Window], settled: Settled, lines: list[int | None]
    ) -> list[int]:
        args: list[int | str] = [
            _member(reservation), -nano(reservation.amount_usd), settled.total.nano, settled.total.tokens,
            settled.estimated.nano, settled.estimated.tokens,
        ]
        now = aware_utc(self._clock)
        for window, line in zip(windows, lines):
            args += [_ttl(window, now), -1 if line is None else line]
        reply = await self._run_in_time(_SETTLE_SCRIPT, _keys(windows), args, self._timeout)
        return [int(value) for value in reply]

    async def _run(self, script: Script, keys: list[str], args: list[int | str], timeout: float | None = None) -> Any:
        seconds = self._timeout if timeout is None else timeout
        bound = asyncio.timeout(seconds)
        try:
            async with bound:
                [reply] = await run_scripts(self._redis, [(script, keys, args)])
        except TimeoutError:
            deadline = bound.when()
            if deadline is not None and self._outage.lag.stalled_through(deadline - seconds):
                raise ProcessStalled(f"this process stood still through most of the ledger's {seconds:g}s bound") from None
            raise
        return reply

    async def _run_in_time(self, script: Script, keys: list[str], args: list[int | str], timeout: float) -> Any:
        """A RESERVE or SETTLE that Redis runs only before this call gives up on it (lua.IN_TIME).

        A timeout is then (nearly always) a call that did nothing, which the caller makes good
        without Redis: a hold of its own, a settle kept for write-back. Only one that ran in time
        and whose reply was lost past the margin counts twice: the ledger errs high, never low.
        """
        give_up_ms = round((self._wall() + timeout * (1 - _IN_TIME_MARGIN)) * 1000)
        reply = await self._run(script, keys, [*args, give_up_ms], timeout)
        if reply is None:  # answered, but ran too late to count (the clocks disagree, or Redis is slow)
            raise TimeoutError(f"redis ran the call after its bound of {timeout:g}s; it did nothing")
        return reply

    async def _read(self, windows: list[Window], now: datetime) -> list[WindowReport]:
        replies = await self._run(_REPORT_SCRIPT, _keys(windows), [_ms(now)])
        reports = []
        for i, window in enumerate(windows):
            spent, reserved, tokens, estimated_spent, estimated_tokens = (int(value or 0) for value in replies[2 * i])
            # Expired holds count as the next reserve will charge them, even before it has.
            expired = sum((_held(member) for member in replies[2 * i + 1]), Spend())
            reports.append(window.report(
                spent + expired.nano, max(0, reserved - expired.nano), tokens + expired.tokens,
                Spend(estimated_spent, estimated_tokens) + expired,
            ))
        return reports


def _config_value(reply: Any) -> str:
    """The value of a one-parameter CONFIG GET: ["name", "value"] (RESP2) or {"name": "value"}."""
    values = list(reply.values()) if isinstance(reply, dict) else list(reply)[1::2]
    if len(values) != 1:
        raise ValueError(f"unexpected CONFIG GET reply {reply!r}")
    value = values[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def _keys(windows: Sequence[Window]) -> list[str]:
    return [key for window in windows for key in window_keys(window)]


def _member(reservation: Reservation) -> str:
    return f"{reservation.id}:{nano(reservation.amount_usd)}:{reservation.tokens}"


def _held(member: bytes) -> Spend:
    """What a hold member holds: "<id>:<amount>:<tokens>", or "<id>:<amount>" from before tokens were held."""
    parts = member.split(b":")
    return Spend(int(parts[1]), int(parts[2]) if len(parts) > 2 else 0)


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _ttl(window: Window, now: datetime) -> int:
    # Relative to this process's clock, not an absolute EXPIREAT, so a test clock in the past works too.
    return max(1, math.ceil((window.keep_until - now).total_seconds()))
