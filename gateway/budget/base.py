"""The spend ledger contract: budgets per scope over UTC days and months, reserved before a call.

A scope is a provider name, or GATEWAY_SCOPE for the gateway-wide budget. Every scope a call
touches has two windows, its UTC day and its UTC month, and `reserve` holds the estimated cost
(and tokens) against all of them at once or against none. Holds count against the limits while
the call is in flight, so a burst cannot overshoot: spend exceeds a limit by at most the
estimation error of the calls in flight. A hold expires on its own: its holder may have died
mid-call, with the provider billing it all the same, so an expired hold is charged at what it
held, as estimated spend (the ledger errs high, never low); `settle` turns a hold, or that
charge, into the real cost and tokens (and the part of them the gateway estimated because the
provider reported no usage), `release` drops it.

Money is kept as integer nano-dollars inside the ledgers: a hundred $0.01 holds must fill a
$1.00 limit exactly, which float sums do not.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, Protocol

from gateway.models import Limit as Limit  # re-exported: the budget's own type
from gateway.records import record

log = logging.getLogger("gateway.budget")

# '@' keeps the gateway-wide scope apart from any provider name ops would choose.
GATEWAY_SCOPE = "@gateway"
WARN_FRACTION = 0.8

# How long a window's figures are kept after it ends, for reporting.
DAY_RETENTION = timedelta(weeks=5)
MONTH_RETENTION = timedelta(days=100)

NANO = 1_000_000_000

Period = Literal["day", "month"]
# Where a report's figures come from: the ledger every instance shares, or this process alone
# (an in-process ledger, or a Redis ledger's fallback while Redis is away).
FiguresSource = Literal["shared", "process"]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@record
class Reservation:
    """A hold on every window of `limits`; what settle and release need, nothing more."""

    id: str
    limits: tuple[Limit, ...]
    amount_usd: float
    day: str  # "2025-01-31": the windows the hold, and later the spend, belong to
    month: str  # "2025-01"
    expires_at: datetime
    fallback: bool = False  # made in a RedisLedger's in-process fallback while Redis was away
    tokens: int = 0  # the tokens held with the amount: what an expired hold is charged

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(limit.scope for limit in self.limits)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reservation was refused: the window that would overflow, and when it starts afresh.

    When several windows would overflow this is the one that resets last, since the call cannot
    go before then. If `spent_usd + requested_usd <= limit_usd`, only holds in flight stand in the
    way and a retry after they settle may pass.
    """

    scope: str
    period: Period
    window: str
    limit_usd: float
    spent_usd: float
    reserved_usd: float
    requested_usd: float
    resets_at: datetime


@dataclass(frozen=True, slots=True)
class WindowReport:
    scope: str
    period: Period
    window: str
    tokens: int
    spent_usd: float
    reserved_usd: float  # live holds of calls in flight
    limit_usd: float | None
    remaining_usd: float | None  # limit - spent - reserved, never below 0; None when unlimited
    resets_at: datetime
    # The part of tokens and spent_usd the gateway estimated (answers without usage).
    estimated_tokens: int = 0
    estimated_usd: float = 0.0
    source: FiguresSource = "shared"
    # Spend this process settled while the shared ledger was away, not yet written back to it
    # (already counted in tokens and spent_usd).
    pending_tokens: int = 0
    pending_usd: float = 0.0
    # The shared ledger holds less than this process has seen it hold: it lost spend (a Redis
    # restarted without it) or has not loaded it yet, so its figures are partial.
    partial: bool = False

    @property
    def exhausted(self) -> bool:
        return self.limit_usd is not None and self.spent_usd >= self.limit_usd

    @property
    def reported_tokens(self) -> int:
        return self.tokens - self.estimated_tokens

    @property
    def reported_usd(self) -> float:
        return self.spent_usd - self.estimated_usd


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A window's spend reached `fraction` of its limit; raised once per window."""

    scope: str
    period: Period
    window: str
    limit_usd: float
    spent_usd: float
    fraction: float


class Ledger(Protocol):
    async def start(self) -> None: ...

    async def reserve(
        self, limits: Sequence[Limit], amount_usd: float, hold_seconds: float, tokens: int = 0
    ) -> Reservation | Refusal:
        """Hold amount_usd (an estimate of `tokens`) against every window of every limit, or refuse and hold nothing."""
        ...

    async def settle(
        self, reservation: Reservation, cost_usd: float, tokens: int, *, estimated_usd: float = 0.0,
        estimated_tokens: int = 0,
    ) -> tuple[BudgetAlert, ...]:
        """Replace the hold with the real cost and tokens, of which `estimated_*` is the part the
        gateway estimated; returns the windows that crossed the alert line."""
        ...

    async def release(self, reservation: Reservation) -> None: ...

    async def report(self, limits: Sequence[Limit]) -> list[WindowReport]:
        """Today's and this month's figures for each scope, day then month, in the order given."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Window:
    """One scope's day or month."""

    scope: str
    period: Period
    label: str
    resets_at: datetime
    limit_nano: int | None

    @property
    def keep_until(self) -> datetime:
        return self.resets_at + (DAY_RETENTION if self.period == "day" else MONTH_RETENTION)

    def report(self, spent: int, reserved: int, tokens: int, estimated: Spend | None = None) -> WindowReport:
        remaining = None if self.limit_nano is None else max(0, self.limit_nano - spent - reserved)
        estimated = estimated or Spend()
        return WindowReport(
            scope=self.scope,
            period=self.period,
            window=self.label,
            tokens=tokens,
            spent_usd=usd(spent),
            reserved_usd=usd(reserved),
            limit_usd=None if self.limit_nano is None else usd(self.limit_nano),
            remaining_usd=None if remaining is None else usd(remaining),
            resets_at=self.resets_at,
            estimated_tokens=estimated.tokens,
            estimated_usd=usd(estimated.nano),
        )

    def refusal(self, spent: int, reserved: int, requested: int) -> Refusal:
        assert self.limit_nano is not None
        return Refusal(
            self.scope, self.period, self.label, usd(self.limit_nano), usd(spent), usd(reserved), usd(requested),
            self.resets_at,
        )

    def alert(self, spent: int, fraction: float) -> BudgetAlert:
        assert self.limit_nano is not None
        return BudgetAlert(self.scope, self.period, self.label, usd(self.limit_nano), usd(spent), fraction)


@record
class Spend:
    """An amount of spend: nano-dollars and tokens."""

    nano: int = 0
    tokens: int = 0

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.nano + other.nano, self.tokens + other.tokens)

    def __sub__(self, other: Spend) -> Spend:
        return Spend(self.nano - other.nano, self.tokens - other.tokens)


NO_SPEND = Spend()  # never changed (a @record): one instance serves every "nothing"


@record
class Settled:
    """What one settle adds to each of its windows: all of it, and the part the gateway estimated."""

    total: Spend
    estimated: Spend

    @classmethod
    def of(cls, cost_usd: float, tokens: int, estimated_usd: float, estimated_tokens: int) -> Settled:
        # A provider's odd usage figure must not fail a call that already succeeded: clamp, don't
        # raise; the estimated part is never more than the whole.
        total = Spend(max(0, nano(cost_usd)), max(0, tokens))
        if not (estimated_usd or estimated_tokens):  # the provider reported its usage: nothing estimated
            return cls(total, NO_SPEND)
        estimated = Spend(min(total.nano, max(0, nano(estimated_usd))), min(total.tokens, max(0, estimated_tokens)))
        return cls(total, estimated)

    def __add__(self, other: Settled) -> Settled:
        return Settled(self.total + other.total, self.estimated + other.estimated)

    def __sub__(self, other: Settled) -> Settled:
        return Settled(self.total - other.total, self.estimated - other.estimated)


# Held reservations are named by uuid4 hex, so this names none of them: settling one unholds nothing.
UNHELD_ID: Final = "unheld"


def unheld_reservation(limits: Sequence[Limit], now: datetime) -> Reservation:
    """A reservation for windows that have no limit: nothing to hold, so no ledger round trip
    before the call; settle still records the spend and tokens for reporting. Nothing is held
    under it, so it needs no id of its own (a random one was a getrandom system call a miss)."""
    day, month = labels(now)
    return Reservation(UNHELD_ID, tuple(limits), 0.0, day, month, now)


def windows_of(limits: Sequence[Limit], day: str, month: str) -> list[Window]:
    """Each scope's day window then its month window, in the order of `limits`."""
    return list(_windows_of(tuple(limits), day, month))


# Every reserve and settle asks for the same few windows; parsing dates each time cost more
# than the rest of a reservation. Windows are frozen, so sharing them is safe.
@functools.lru_cache(maxsize=1024)
def _windows_of(limits: tuple[Limit, ...], day: str, month: str) -> tuple[Window, ...]:
    day_resets = day_start(day) + timedelta(days=1)
    month_resets = next_month(month_start(month))
    windows = []
    for limit in limits:
        windows.append(Window(limit.scope, "day", day, day_resets, nano_or_none(limit.daily_usd)))
        windows.append(Window(limit.scope, "month", month, month_resets, nano_or_none(limit.monthly_usd)))
    return tuple(windows)


def check_limits(limits: Sequence[Limit]) -> None:
    scopes = [limit.scope for limit in limits]
    if len(set(scopes)) != len(scopes):
        # The same window twice would count one call twice.
        raise ValueError(f"each scope may appear once: {scopes}")
    for limit in limits:
        for value in (limit.daily_usd, limit.monthly_usd):
            if value is not None and value < 0:
                raise ValueError(f"{limit.scope}: a budget cannot be negative ({value})")


def check_reserve(limits: Sequence[Limit], amount_usd: float, hold_seconds: float) -> None:
    check_limits(limits)
    if not amount_usd >= 0:
        raise ValueError(f"amount_usd must be 0 or more, not {amount_usd}")
    if not hold_seconds > 0:
        raise ValueError(f"hold_seconds must be positive, not {hold_seconds}")


def labels(now: datetime) -> tuple[str, str]:
    """The UTC day and month `now` falls in."""
    now = now.astimezone(UTC)
    return _labels_of(now.year, now.month, now.day)


@functools.lru_cache(maxsize=64)  # every reservation asks; a day has one answer
def _labels_of(year: int, month: int, day: int) -> tuple[str, str]:
    month_label = f"{year:04d}-{month:02d}"
    return f"{month_label}-{day:02d}", month_label


# fromisoformat, not strptime: strptime imports its module on first use, a file open on the
# request path that fails when a crowd of clients holds every descriptor.
def day_start(label: str) -> datetime:
    return datetime.fromisoformat(label).replace(tzinfo=UTC)


def month_start(label: str) -> datetime:
    return datetime.fromisoformat(f"{label}-01").replace(tzinfo=UTC)


def next_month(start: datetime) -> datetime:
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def aware_utc(clock: Clock) -> datetime:
    now = clock()
    if now.tzinfo is None:
        raise ValueError("the ledger clock must return an aware datetime")
    return now.astimezone(UTC)


def nano(usd_amount: float) -> int:
    return round(usd_amount * NANO)


def nano_or_none(usd_amount: float | None) -> int | None:
    return None if usd_amount is None else nano(usd_amount)


def usd(nano_amount: int) -> float:
    return nano_amount / NANO


def warn_line(window: Window, fraction: float) -> int | None:
    return None if window.limit_nano is None else round(window.limit_nano * fraction)


def log_alerts(alerts: Sequence[BudgetAlert]) -> None:
    for alert in alerts:
        log.warning(
            "budget %s %s %s: $%.6g spent of $%.6g (%.0f%% line crossed)",
            alert.scope, alert.period, alert.window, alert.spent_usd, alert.limit_usd, alert.fraction * 100,
        )


def binding_refusal(refusals: Sequence[Refusal]) -> Refusal:
    """Of the windows that would overflow, the one that resets last: the call waits for all of them."""
    return max(refusals, key=lambda refusal: refusal.resets_at)  # max keeps the first of equals
