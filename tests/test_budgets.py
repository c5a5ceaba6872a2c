"""Spend budgets in the request path: reserve before a call, settle after, 429 when none is left."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.budget import MemoryLedger
from tests.support.gateway import GatewayFactory, emulator_requests

ADMIN = {"Authorization": "Bearer admin-secret"}
TINY = 0.00001  # a few requests' worth at the emulator's prices


def fresh(i: int, documents: int = 5) -> dict[str, Any]:
    return {"query": f"question number {i} about costs", "documents": [f"passage {i}-{d} about costs and fees" for d in range(documents)]}


def budgets(**per_provider: float) -> Any:
    def edit(raw: dict[str, Any]) -> None:
        for provider, daily in per_provider.items():
            raw["providers"][provider]["budget"] = {"daily_usd": daily}
        raw["server"]["admin_key_env"] = "ADMIN_KEY"

    return edit


@pytest.fixture(autouse=True)
def _admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")


async def spend_of(gateway, provider: str) -> dict[str, Any]:
    return (await (await gateway.get("/admin/spend", headers=ADMIN)).json())["providers"][provider]


async def test_an_exhausted_provider_is_skipped_for_the_next(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(edit=budgets(deepinfra=TINY))
    providers = []
    for i in range(40):
        response = await gateway.post("/v1/rerank", json=fresh(i))
        assert response.status == 200
        providers.append(response.headers["X-Rerank-Provider"])
    assert providers[0] == "deepinfra" and providers[-1] == "fireworks"
    switched = providers.index("fireworks")
    assert set(providers[switched:]) == {"fireworks"}
    today = (await spend_of(gateway, "deepinfra"))["today"]
    assert today["budget_usd"] == TINY and today["reserved_usd"] == 0
    assert today["usd"] <= TINY  # sequential calls: each reservation is settled before the next
    assert (await emulator_requests(emulator))["deepinfra"] == switched


async def test_every_provider_exhausted_is_429_with_retry_after(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(edit=budgets(deepinfra=TINY, fireworks=TINY))
    for i in range(80):
        response = await gateway.post("/v1/rerank", json=fresh(i))
        if response.status != 200:
            break
    assert response.status == 429
    body = await response.json()
    assert body["error"]["type"] == "budget_exhausted"
    assert "deepinfra" in body["error"]["message"] and "fireworks" in body["error"]["message"]
    assert "deepinfra daily budget of $1e-05 would be exceeded" in body["error"]["message"]
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert abs(int(response.headers["Retry-After"]) - (midnight - now).total_seconds()) <= 5
    calls = await emulator_requests(emulator)
    again = await gateway.post("/v1/rerank", json=fresh(1000))
    assert again.status == 429
    assert await emulator_requests(emulator) == calls  # nothing was called for the refused request


async def test_cached_pairs_are_served_when_the_budget_is_gone(make_gateway: GatewayFactory):
    gateway = await make_gateway(edit=budgets(deepinfra=TINY, fireworks=TINY))
    first = fresh(0)
    assert (await gateway.post("/v1/rerank", json=first)).status == 200
    for i in range(1, 80):
        if (await gateway.post("/v1/rerank", json=fresh(i))).status == 429:
            break
    cached = await gateway.post("/v1/rerank", json=first)
    assert cached.status == 200 and cached.headers["X-Rerank-Provider"] == "cache"


async def test_windows_roll_over_at_utc_midnight(make_gateway: GatewayFactory):
    now = [datetime(2026, 11, 25, 23, 59, 0, tzinfo=UTC)]
    ledger = MemoryLedger(clock=lambda: now[0])
    gateway = await make_gateway(fallback=["deepinfra"], edit=budgets(deepinfra=TINY), app_options={"ledger": ledger})
    for i in range(60):
        if (await gateway.post("/v1/rerank", json=fresh(i))).status == 429:
            break
    else:
        pytest.fail("the budget was never exhausted")
    now[0] += timedelta(minutes=2)  # 2026-11-26 00:01 UTC: a new day
    response = await gateway.post("/v1/rerank", json=fresh(500))
    assert response.status == 200
    today = (await spend_of(gateway, "deepinfra"))["today"]
    assert today["window"] == "2026-11-26" and 0 < today["usd"] <= TINY


async def test_admin_spend_reports_every_window_and_the_learned_ratio(make_gateway: GatewayFactory):
    gateway = await make_gateway(edit=budgets(fireworks=1.0))
    for i in range(3):
        await gateway.post("/v1/rerank", json=fresh(i))
    report = await (await gateway.get("/admin/spend", headers=ADMIN)).json()
    deepinfra = report["providers"]["deepinfra"]
    assert deepinfra["today"]["tokens"] > 0 and deepinfra["today"]["usd"] > 0
    assert deepinfra["month"]["tokens"] == deepinfra["today"]["tokens"]
    assert deepinfra["today"]["budget_usd"] is None and deepinfra["today"]["remaining_usd"] is None
    assert report["providers"]["fireworks"]["today"]["remaining_usd"] == 1.0
    assert report["gateway"]["today"]["tokens"] == deepinfra["today"]["tokens"]
    # The emulator counts ~4 characters a token plus per-pair overhead; the estimator learns it.
    assert 1.0 < deepinfra["chars_per_token"] < 8.0
    assert (await gateway.get("/admin/spend")).status == 401


async def test_admin_spend_splits_reported_and_estimated_spend_and_says_where_figures_come_from(
    make_gateway: GatewayFactory,
):
    from gateway.budget import GATEWAY_SCOPE, Limit, unheld_reservation, utc_now

    ledger = MemoryLedger()
    gateway = await make_gateway(edit=budgets(fireworks=1.0), app_options={"ledger": ledger})
    limits = [Limit("deepinfra"), Limit(GATEWAY_SCOPE)]
    # What the guarded call settles: a call with usage, and one the gateway had to estimate.
    await ledger.settle(unheld_reservation(limits, utc_now()), 0.002, 40_000)
    await ledger.settle(unheld_reservation(limits, utc_now()), 0.001, 20_000, estimated_usd=0.001, estimated_tokens=20_000)
    await ledger.settle(unheld_reservation([Limit("fireworks"), Limit(GATEWAY_SCOPE)], utc_now()), 0.0005, 5_000)
    report = await (await gateway.get("/admin/spend", headers=ADMIN)).json()
    today = report["providers"]["deepinfra"]["today"]
    assert (today["tokens"], today["usd"]) == (60_000, 0.003)
    assert today["reported"] == {"tokens": 40_000, "usd": 0.002}
    assert today["estimated"] == {"tokens": 20_000, "usd": 0.001}
    total = report["gateway"]["month"]
    assert (total["tokens"], total["reported"]["tokens"], total["estimated"]["tokens"]) == (65_000, 45_000, 20_000)
    assert total["estimated"]["usd"] == 0.001 and total["usd"] == pytest.approx(0.0035)
    # An in-process ledger: the figures are this process's, and nothing waits for a write-back.
    assert report["ledger"] == {"figures": "per_process", "pending_usd": 0, "pending_tokens": 0, "partial": False}


async def test_crossing_80_percent_logs_a_warning(make_gateway: GatewayFactory, caplog):
    # Room for several requests, so one settles between 80% and 100% of the budget.
    gateway = await make_gateway(fallback=["deepinfra"], edit=budgets(deepinfra=TINY * 5))
    with caplog.at_level("WARNING", logger="gateway.budget"):
        for i in range(60):
            if (await gateway.post("/v1/rerank", json=fresh(i))).status == 429:
                break
    warnings = [r for r in caplog.records if r.name == "gateway.budget" and "80% line crossed" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
