"""The in-process ledger: the whole budget for one process, and RedisLedger's stand-in while Redis is away.

Nothing in reserve/settle awaits, so on one event loop each call is atomic by construction.
As a stand-in it starts from the shared figures last seen in Redis (mirrored on every reply,
granted or refused) and counts what this process settled on top, until that is written back.
"""

from __future__ import annotations

import dataclasses
import heapq
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from gateway.budget.base import (
    NO_SPEND,
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
    utc_now,
    warn_line,
    windows_of,
)


@dataclass(slots=True)
class _Totals:
    """One window's figures; money in nano-dollars."""

    keep_until: datetime
    # Settled here (for a stand-in: not yet written back to the shared ledger).
    spent: int = 0
    tokens: int = 0
    estimated: Spend = field(default_factory=Spend)
    # Spend recorded elsewhere, as last seen there (a RedisLedger mirrors Redis's figures here so
    # its fallback starts from what is already spent); 0 for a ledger of its own.
    shared_spent: int = 0
    shared_tokens: int = 0
    shared_estimated: Spend = field(default_factory=Spend)
    reserved: int = 0
    warned: bool = False
    holds: dict[str, tuple[Spend, float]] = field(default_factory=dict)  # id -> (held, expires at, epoch s)
    expiries: list[tuple[float, str]] = field(default_factory=list)  # heap; settled holds linger until popped
    charged: dict[str, Spend] = field(default_factory=dict)  # id -> what its hold was charged at expiry

    @property
    def total_spent(self) -> int:
        return self.spent + self.shared_spent

    def add(self, settled: Settled) -> None:
        self.spent += settled.total.nano
        self.tokens += settled.total.tokens
        if settled.estimated is not NO_SPEND:
            self.estimated += settled.estimated

    def report(self, window: Window) -> WindowReport:
        return window.report(
            self.total_spent, self.reserved, self.tokens + self.shared_tokens, self.estimated + self.shared_estimated
        )

    def purge(self, now: float) -> None:
        """Charge the holds expired by `now` at what they held, as estimated spend (see base.py)."""
        while self.expiries and self.expiries[0][0] <= now:
            expires, hold_id = heapq.heappop(self.expiries)
            hold = self.holds.get(hold_id)
            if hold is not None and hold[1] == expires:
                del self.holds[hold_id]
                held = hold[0]
                self.reserved -= held.nano
                self.add(Settled(held, held))
                self.charged[hold_id] = held

    def hold(self, hold_id: str, held: Spend, expires: float) -> None:
        self.holds[hold_id] = (held, expires)
        heapq.heappush(self.expiries, (expires, hold_id))
        self.reserved += held.nano

    def unhold(self, hold_id: str) -> None:
        """End the hold; or take back what it was charged at expiry, which the caller's figures replace."""
        hold = self.holds.pop(hold_id, None)
        if hold is not None:
            self.reserved -= hold[0].nano
        elif (charged := self.charged.pop(hold_id, None)) is not None:
            self.add(Settled(Spend(), Spend()) - Settled(charged, charged))


class _Held(NamedTuple):
    window: Window
    figures: _Totals
    warn_line: int | None  # nano-dollars; None: the window has no limit


class MemoryLedger:
    def __init__(self, clock: Clock = utc_now, warn_fraction: float = WARN_FRACTION, log_crossings: bool = True) -> None:
        """`log_crossings=False` for a stand-in: the shared ledger logs each crossing once for all processes."""
        self._clock = clock
        self._warn_fraction = warn_fraction
        self._log_crossings = log_crossings
        self._totals: dict[tuple[str, str], _Totals] = {}  # (scope, window label)
        # A reservation's windows with their figures and alert lines, found once per (limits, day,
        # month): every settle of a day asks for the same few. Cleared whenever a figure is dropped.
        self._held: dict[tuple[tuple[Limit, ...], str, str], tuple[_Held, ...]] = {}
        self._pruned_on = ""

    async def start(self) -> None:
        """Nothing to open: the in-process ledger is ready when built."""

    async def reserve(
        self, limits: Sequence[Limit], amount_usd: float, hold_seconds: float, tokens: int = 0
    ) -> Reservation | Refusal:
        check_reserve(limits, amount_usd, hold_seconds)
        now = aware_utc(self._clock)
        day, month = labels(now)
        self._prune(day, now)
        windows = windows_of(limits, day, month)
        totals = [self._totals_of(window) for window in windows]
        amount = nano(amount_usd)
        refusals = []
        for window, figures in zip(windows, totals):
            figures.purge(now.timestamp())
            if window.limit_nano is not None and figures.total_spent + figures.reserved + amount > window.limit_nano:
                refusals.append(window.refusal(figures.total_spent, figures.reserved, amount))
        if refusals:
            return binding_refusal(refusals)
        reservation = Reservation(
            uuid.uuid4().hex, tuple(limits), amount_usd, day, month, now + timedelta(seconds=hold_seconds),
            tokens=max(0, tokens),
        )
        for figures in totals:
            figures.hold(reservation.id, Spend(amount, reservation.tokens), reservation.expires_at.timestamp())
        return reservation

    async def settle(
        self, reservation: Reservation, cost_usd: float, tokens: int, *, estimated_usd: float = 0.0,
        estimated_tokens: int = 0,
    ) -> tuple[BudgetAlert, ...]:
        settled = Settled.of(cost_usd, tokens, estimated_usd, estimated_tokens)
        alerts = []
        for window, figures, line in self._windows_held(reservation):
            figures.unhold(reservation.id)
            figures.add(settled)
            if line is not None and settled.total.nano > 0 and not figures.warned and figures.total_spent >= line:
                figures.warned = True
                alerts.append(window.alert(figures.total_spent, self._warn_fraction))
        if not alerts:
            return ()
        if self._log_crossings:
            log_alerts(alerts)
        return tuple(alerts)

    async def release(self, reservation: Reservation) -> None:
        for window in windows_of(reservation.limits, reservation.day, reservation.month):
            figures = self._totals.get((window.scope, window.label))
            if figures is not None:
                figures.unhold(reservation.id)

    async def report(self, limits: Sequence[Limit]) -> list[WindowReport]:
        check_limits(limits)
        now = aware_utc(self._clock)
        reports = []
        for window in windows_of(limits, *labels(now)):
            figures = self._totals.get((window.scope, window.label))
            if figures is None:
                reports.append(window.report(0, 0, 0))
                continue
            figures.purge(now.timestamp())
            reports.append(figures.report(window))
        return [dataclasses.replace(report, source="process") for report in reports]

    async def close(self) -> None:
        self._totals.clear()
        self._held.clear()

    def mirror_shared_spend(self, windows: Sequence[Window], figures: Sequence[int]) -> None:
        """Remember what the shared ledger says these windows have spent: nano-dollars of each
        window, then tokens of each.

        The largest figure seen wins: replies to concurrent calls arrive in any order, and a
        window's spend only grows (a shared ledger that lost it is no reason to spend it again).
        """
        count = len(windows)
        for window, spent, tokens in zip(windows, figures[:count], figures[count:]):
            totals = self._totals_of(window)
            totals.shared_spent = max(totals.shared_spent, spent)
            totals.shared_tokens = max(totals.shared_tokens, tokens)

    def mirror_shared_report(self, window: Window, report: WindowReport) -> None:
        """Remember a shared report's tokens and estimated part too, for reports made from here."""
        figures = self._totals_of(window)
        figures.shared_spent = max(figures.shared_spent, nano(report.spent_usd))
        figures.shared_tokens = max(figures.shared_tokens, report.tokens)
        figures.shared_estimated = Spend(
            max(figures.shared_estimated.nano, nano(report.estimated_usd)),
            max(figures.shared_estimated.tokens, report.estimated_tokens),
        )

    def shared_seen(self, window: Window) -> Spend:
        """The most spend and tokens the shared ledger was seen holding for this window."""
        figures = self._totals.get((window.scope, window.label))
        return Spend() if figures is None else Spend(figures.shared_spent, figures.shared_tokens)

    def written_back(self, window: Window, settled: Settled, shared_spent: int) -> None:
        """`settled` went from this process's figures into the shared ledger, which now holds `shared_spent`."""
        figures = self._totals_of(window)
        figures.add(Settled(Spend(), Spend()) - settled)
        figures.shared_spent = max(figures.shared_spent, shared_spent)
        figures.shared_tokens += settled.total.tokens
        figures.shared_estimated += settled.estimated

    def _totals_of(self, window: Window) -> _Totals:
        key = (window.scope, window.label)
        figures = self._totals.get(key)
        if figures is None:
            figures = self._totals[key] = _Totals(keep_until=window.keep_until)
        return figures

    def _windows_held(self, reservation: Reservation) -> tuple[_Held, ...]:
        key = (reservation.limits, reservation.day, reservation.month)
        held = self._held.get(key)
        if held is None:
            windows = windows_of(*key)
            held = self._held[key] = tuple(
                _Held(window, self._totals_of(window), warn_line(window, self._warn_fraction)) for window in windows)
        return held

    def _prune(self, day: str, now: datetime) -> None:
        if day == self._pruned_on:
            return
        self._pruned_on = day
        self._held.clear()  # it may hold figures dropped here, which a settle would then add to unseen
        for key in [key for key, figures in self._totals.items() if figures.keep_until <= now]:
            del self._totals[key]
