"""/status's clients table: each named client's spend against its budget, its rate against its limit.

One self-contained piece of the page: `client_rows` reads the ledger and the rate counts once per
page, `clients_section` renders them (escaped, like the rest of the page).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass

from gateway.budget import client_limit
from gateway.runtime import LiveGateway


@dataclass(frozen=True, slots=True)
class ClientRow:
    name: str
    team: str | None
    today_usd: float
    daily_usd: float | None  # None: tracked, not limited
    month_usd: float
    monthly_usd: float | None
    requests_last_minute: int | None  # None: no requests_per_minute limit, so not counted
    requests_per_minute: int | None


async def client_rows(live: LiveGateway) -> tuple[ClientRow, ...]:
    generation = live.current
    config = generation.config
    if not config.clients:
        return ()
    reports = await live.shared.ledger.report([client_limit(name, c.budget) for name, c in config.clients.items()])
    rows = []
    for (name, settings), today, month in zip(config.clients.items(), reports[0::2], reports[1::2]):
        client = generation.client_book.named[name]
        own = [rate for rate in client.rates if rate.key == f"client:{name}:requests"]
        used = (await live.shared.rates.used(own))[0] if own else None
        rows.append(ClientRow(name, settings.team, today.spent_usd, today.limit_usd, month.spent_usd, month.limit_usd,
                              used, settings.limits.requests_per_minute))
    return tuple(rows)


def clients_section(rows: tuple[ClientRow, ...], usd: Callable[[float], str]) -> str:
    """The clients table; `usd` is the page's one money format."""
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{_e(row.name)}</td><td>{_e(row.team or '—')}</td>"
        f"<td>{_against(usd(row.today_usd), row.daily_usd, usd)}</td>"
        f"<td>{_against(usd(row.month_usd), row.monthly_usd, usd)}</td>"
        f"<td>{_rate(row)}</td></tr>"
        for row in rows
    )
    return (
        "<section><h2>Clients</h2><table class=\"clients\"><thead><tr><th>client</th><th>team</th>"
        "<th>today</th><th>month</th><th>requests / min</th></tr></thead>"
        f"<tbody>{body}</tbody></table></section>"
    )


def _against(spent: str, limit: float | None, usd: Callable[[float], str]) -> str:
    return _e(spent if limit is None else f"{spent} of {usd(limit)}")


def _rate(row: ClientRow) -> str:
    if row.requests_per_minute is None or row.requests_last_minute is None:
        return "no limit"
    return _e(f"{row.requests_last_minute} of {row.requests_per_minute}")


def _e(text: str) -> str:
    return html.escape(text, quote=True)
