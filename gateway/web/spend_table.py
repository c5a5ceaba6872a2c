"""GET /admin/spend's answer as a table people read: `rerank-gateway spend` prints it."""

from __future__ import annotations

from typing import Any, Literal

_COLUMNS = ("scope", "window", "tokens", "reported", "estimated", "usd", "reported $", "estimated $", "budget $",
            "remaining $")


SpendBy = Literal["provider", "client", "team"]


def format_spend(answer: dict[str, Any], by: SpendBy = "provider") -> str:
    """One row per provider (or client, or team) and window, then the gateway-wide total; a last
    line says where the figures come from."""
    rows: list[tuple[str, ...]] = [_COLUMNS]
    for name, windows in answer[f"{by}s"].items():
        label = f"{name} ({windows['team']})" if by == "client" and windows.get("team") else name
        rows += [_row(label, windows[period]) for period in ("today", "month")]
    rows += [_row("gateway (total)", answer["gateway"][period]) for period in ("today", "month")]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) if i < 2 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join([*lines, "", _ledger_line(answer["ledger"])])


def _row(scope: str, window: dict[str, Any]) -> tuple[str, ...]:
    budget, remaining = window["budget_usd"], window["remaining_usd"]
    return (
        scope, window["window"], str(window["tokens"]), str(window["reported"]["tokens"]),
        str(window["estimated"]["tokens"]), _usd(window["usd"]), _usd(window["reported"]["usd"]),
        _usd(window["estimated"]["usd"]), "-" if budget is None else _usd(budget),
        "-" if remaining is None else _usd(remaining),
    )


def _usd(amount: float) -> str:
    return f"{amount:.6f}"


def _ledger_line(ledger: dict[str, Any]) -> str:
    if ledger["figures"] == "shared":
        where = "figures: the shared ledger"
    else:
        where = "figures: THIS PROCESS ONLY (in-process ledger, or the shared ledger is unreachable)"
    if ledger["pending_tokens"] or ledger["pending_usd"]:
        where += f"; pending write-back: ${ledger['pending_usd']:.6f}, {ledger['pending_tokens']} tokens"
    return where
