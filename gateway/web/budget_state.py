"""Where each budget stands, for /readyz, /status and the provider states: one reading of the ledger.

A window "refuses" once it is spent, or once a reservation in it was refused since the config was
loaded: near the limit a normal request no longer fits although the bar shows 99%, and that is
when clients start getting 429s. A window past the alert share (the ledger's WARN_FRACTION, where
its budget alert fires) is a warning; one that refuses says until when.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.budget import GATEWAY_SCOPE, WindowReport, scope_label
from gateway.budget.base import WARN_FRACTION
from gateway.resilience.health import HealthBoard


@dataclass(frozen=True, slots=True)
class BudgetWindow:
    report: WindowReport
    refusing: bool  # spent, or a reservation was refused since the config was loaded

    @property
    def fraction(self) -> float | None:
        limit = self.report.limit_usd
        if limit is None:
            return None
        used = self.report.spent_usd + self.report.reserved_usd
        return used / limit if limit > 0 else (1.0 if used > 0 else 0.0)

    def warning(self) -> str | None:
        report, fraction = self.report, self.fraction
        if fraction is None or report.limit_usd is None:
            return None
        period = "daily" if report.period == "day" else "monthly"
        who = f"budget: {scope_label(report.scope)} {period} ${report.limit_usd:g}"
        if self.refusing:
            return (f"{who} refuses new pairs until {iso(report.resets_at.timestamp())} "
                    f"({fraction:.0%} spent or held)")
        if fraction >= WARN_FRACTION:
            return f"{who} is {fraction:.0%} spent or held, past its alert share of {WARN_FRACTION:.0%}"
        return None


@dataclass(frozen=True, slots=True)
class BudgetState:
    windows: tuple[BudgetWindow, ...]

    @staticmethod
    def read(reports: list[WindowReport], health: HealthBoard, loaded_at: float) -> BudgetState:
        return BudgetState(tuple(
            BudgetWindow(report, report.exhausted or health.budget_refusing(report.scope, report.period, loaded_at))
            for report in reports
        ))

    def of(self, scope: str) -> tuple[BudgetWindow, ...]:
        return tuple(window for window in self.windows if window.report.scope == scope)

    def refusing_until(self, provider: str) -> float | None:
        """When the provider can pay for new pairs again (its budget's or the gateway's), or None: it can now."""
        ends = [
            window.report.resets_at.timestamp()
            for window in (*self.of(provider), *self.of(GATEWAY_SCOPE))
            if window.refusing
        ]
        return max(ends) if ends else None  # every refusing window must reset before a call fits

    def warnings(self) -> list[str]:
        return [warning for window in self.windows if (warning := window.warning()) is not None]


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
