"""Clients and teams in one gateway process, over its socket: keys, models, budgets, rates, attribution."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.observability.logs import REQUEST_LOGGER
from tests.support.config import MODEL, changed, gateway_config, local_url
from tests.support.gateway import GatewayFactory, add_fault, emulator_requests

ADMIN = {"Authorization": "Bearer admin-secret"}
KEYS = {"KB_PROD_KEY": "kb-prod-secret-1", "KB_STAGING_KEY": "kb-staging-secret-2", "ADS_KEY": "ads-secret-3"}
TINY = 0.00001  # a few requests' worth at the emulator's prices


def bearer(env: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[env]}"}


def fresh(i: int, documents: int = 5) -> dict[str, Any]:
    return {"query": f"client question {i}", "documents": [f"passage {i}-{d} about teams" for d in range(documents)]}


def clients(**overrides: dict[str, Any]) -> Any:
    """kb-prod and kb-staging in team search, ads in team ads; `overrides` merge into a client's entry."""

    def edit(raw: dict[str, Any]) -> None:
        raw["server"]["admin_key_env"] = "ADMIN_KEY"
        raw["clients"] = {
            "kb-prod": {"key_env": "KB_PROD_KEY", "team": "search"},
            "kb-staging": {"key_env": "KB_STAGING_KEY", "team": "search"},
            "ads": {"key_env": "ADS_KEY", "team": "ads"},
        }
        raw["teams"] = {"search": {}, "ads": {}}
        for name, values in overrides.items():
            target = raw["teams"] if name.startswith("team_") else raw["clients"]
            target[name.removeprefix("team_")].update(values)

    return edit


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")
    for env, key in KEYS.items():
        monkeypatch.setenv(env, key)


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("clients.kb.team", "nobody", "clients.kb.team: no team named 'nobody' (add [teams.nobody])"),
    ("clients.kb.models", ["gpt-4"], "clients.kb.models: 'gpt-4' is no model name or alias here"),
    ("clients.kb.limits", {"requests_per_minute": 0}, "clients.kb.limits.requests_per_minute"),
    ("clients.kb.limits", {"per_hour": 5}, "unknown key 'per_hour'"),
    ("clients.kb.budget", {"daily_usd": -1}, "clients.kb.budget.daily_usd"),
])
def test_a_client_entry_that_breaks_a_rule_is_named(key: str, value: Any, problem: str):
    raw = gateway_config(local_url(9))
    raw["clients"] = {"kb": {"key_env": "KB_PROD_KEY"}}
    with pytest.raises(ConfigError, match=re.escape(problem)):
        parse_config(changed(raw, key, value))


def test_a_client_name_that_cannot_be_a_label_is_refused():
    raw = gateway_config(local_url(9))
    raw["clients"] = {"kb prod!": {"key_env": "KB_PROD_KEY"}}
    with pytest.raises(ConfigError, match=re.escape("clients.kb prod!: a name is 1-64 letters")):
        parse_config(raw)


async def test_once_a_client_is_named_every_request_needs_a_valid_key(make_gateway: GatewayFactory, monkeypatch):
    monkeypatch.setenv("OLD_KEYS", "old-key-a,old-key-b")
    gateway = await make_gateway(edit=clients(), server={"api_keys_env": "OLD_KEYS"})
    assert (await gateway.post("/v1/rerank", json=fresh(0))).status == 401
    wrong = await gateway.post("/v1/rerank", json=fresh(0), headers={"Authorization": "Bearer kb-prod-secret-"})
    assert wrong.status == 401 and (await wrong.json())["error"]["type"] == "unauthorized"
    assert (await gateway.post("/v1/rerank", json=fresh(0), headers=bearer("KB_PROD_KEY"))).status == 200
    # The older flat key list keeps working beside the named clients, as the anonymous client.
    old = await gateway.post("/v1/rerank", json=fresh(1), headers={"Authorization": "Bearer old-key-b"})
    assert old.status == 200


async def test_a_model_the_client_may_not_use_is_403_naming_it(make_gateway: GatewayFactory):
    def edit(raw: dict[str, Any]) -> None:
        clients(ads={"models": ["other"]})(raw)
        raw["models"]["other"] = {"fallback": ["tei"], "aliases": ["other-alias"], "quality": {"probe_interval_seconds": 0}}

    gateway = await make_gateway(edit=edit)
    refused = await gateway.post("/v1/rerank", json={**fresh(0), "model": MODEL}, headers=bearer("ADS_KEY"))
    assert refused.status == 403
    body = await refused.json()
    assert body["error"]["type"] == "model_not_allowed"
    assert f"client 'ads' may not use model {MODEL!r}" in body["error"]["message"]
    allowed = await gateway.post("/v1/rerank", json={**fresh(0), "model": "other-alias"}, headers=bearer("ADS_KEY"))
    assert allowed.status == 200
    # A client without a models list may use every model.
    assert (await gateway.post("/v1/rerank", json={**fresh(1), "model": "other"}, headers=bearer("KB_PROD_KEY"))).status == 200


async def test_a_client_over_its_budget_is_refused_while_another_teams_client_is_served(
    make_gateway: GatewayFactory, emulator,
):
    gateway = await make_gateway(edit=clients(**{"kb-staging": {"budget": {"daily_usd": TINY}}}))
    first = fresh(0)
    assert (await gateway.post("/v1/rerank", json=first, headers=bearer("KB_STAGING_KEY"))).status == 200
    for i in range(1, 80):
        response = await gateway.post("/v1/rerank", json=fresh(i), headers=bearer("KB_STAGING_KEY"))
        if response.status != 200:
            break
    assert response.status == 429
    body = await response.json()
    assert body["error"]["type"] == "budget_exhausted"
    assert "client kb-staging daily budget of $1e-05 would be exceeded in " in body["error"]["message"]
    assert "spent $" in body["error"]["message"]
    assert int(response.headers["Retry-After"]) >= 1
    calls = await emulator_requests(emulator)
    # Its cached repeats cost nothing and are still answered; nothing more goes upstream for it.
    repeat = await gateway.post("/v1/rerank", json=first, headers=bearer("KB_STAGING_KEY"))
    assert repeat.status == 200 and repeat.headers["X-Rerank-Cache"] == "hits=5; misses=0"
    assert await emulator_requests(emulator) == calls
    # Another team's client, and its own team-mate, are served.
    assert (await gateway.post("/v1/rerank", json=fresh(500), headers=bearer("ADS_KEY"))).status == 200
    assert (await gateway.post("/v1/rerank", json=fresh(501), headers=bearer("KB_PROD_KEY"))).status == 200
    spend = await (await gateway.get("/admin/spend", headers=ADMIN)).json()
    staging = spend["clients"]["kb-staging"]
    assert staging["team"] == "search" and staging["today"]["budget_usd"] == TINY
    assert 0 < staging["today"]["usd"] <= TINY and staging["today"]["reserved_usd"] == 0
    assert spend["clients"]["ads"]["today"]["usd"] > 0 and spend["teams"]["ads"]["today"]["usd"] > 0
    assert spend["teams"]["search"]["today"]["usd"] == pytest.approx(
        staging["today"]["usd"] + spend["clients"]["kb-prod"]["today"]["usd"])


async def test_a_team_budget_binds_all_its_clients(make_gateway: GatewayFactory):
    gateway = await make_gateway(edit=clients(team_search={"budget": {"daily_usd": TINY}}))
    statuses = []
    for i in range(80):
        key = "KB_PROD_KEY" if i % 2 else "KB_STAGING_KEY"
        response = await gateway.post("/v1/rerank", json=fresh(i), headers=bearer(key))
        statuses.append(response.status)
        if response.status == 429:
            break
    assert statuses[-1] == 429
    assert "team search daily budget" in (await response.json())["error"]["message"]
    assert (await gateway.post("/v1/rerank", json=fresh(900), headers=bearer("ADS_KEY"))).status == 200


async def test_requests_per_minute_is_429_rate_limited_with_retry_after(make_gateway: GatewayFactory):
    gateway = await make_gateway(edit=clients(**{"kb-prod": {"limits": {"requests_per_minute": 3}}}))
    statuses = [(await gateway.post("/v1/rerank", json=fresh(i), headers=bearer("KB_PROD_KEY"))).status for i in range(3)]
    assert statuses == [200, 200, 200]
    refused = await gateway.post("/v1/rerank", json=fresh(3), headers=bearer("KB_PROD_KEY"))
    assert refused.status == 429
    body = await refused.json()
    assert body["error"]["type"] == "rate_limited"
    assert "client kb-prod is over its requests_per_minute = 3" in body["error"]["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 120
    assert (await gateway.post("/v1/rerank", json=fresh(4), headers=bearer("KB_STAGING_KEY"))).status == 200


async def test_documents_per_minute_counts_documents(make_gateway: GatewayFactory):
    gateway = await make_gateway(edit=clients(team_ads={"limits": {"documents_per_minute": 12}}))
    assert (await gateway.post("/v1/rerank", json=fresh(0, 10), headers=bearer("ADS_KEY"))).status == 200
    refused = await gateway.post("/v1/rerank", json=fresh(1, 3), headers=bearer("ADS_KEY"))
    assert refused.status == 429
    assert "team ads is over its documents_per_minute = 12 (10 in the last minute)" in (await refused.json())["error"]["message"]
    assert (await gateway.post("/v1/rerank", json=fresh(2, 2), headers=bearer("ADS_KEY"))).status == 200


async def test_concurrent_caps_a_clients_requests_in_flight(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(edit=clients(**{"kb-prod": {"limits": {"concurrent": 1}}}))
    await add_fault(emulator, "deepinfra", "slow", delay_ms=1500, count=1)
    slow = asyncio.ensure_future(gateway.post("/v1/rerank", json=fresh(0), headers=bearer("KB_PROD_KEY")))
    deadline = asyncio.get_running_loop().time() + 10
    while (await emulator_requests(emulator)).get("deepinfra", 0) == 0 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    refused = await gateway.post("/v1/rerank", json=fresh(1), headers=bearer("KB_PROD_KEY"))
    assert refused.status == 429 and "concurrent limit" in (await refused.json())["error"]["message"]
    assert (await gateway.post("/v1/rerank", json=fresh(2), headers=bearer("KB_STAGING_KEY"))).status == 200
    assert (await slow).status == 200
    assert (await gateway.post("/v1/rerank", json=fresh(3), headers=bearer("KB_PROD_KEY"))).status == 200


async def test_client_and_team_in_the_log_and_metrics_never_the_key(make_gateway: GatewayFactory, caplog):
    gateway = await make_gateway(edit=clients())
    with caplog.at_level(logging.DEBUG):
        assert (await gateway.post("/v1/rerank", json=fresh(0), headers=bearer("KB_PROD_KEY"))).status == 200
        assert (await gateway.post("/v1/rerank", json=fresh(1), headers={"Authorization": "Bearer not-a-key"})).status == 401
    lines = [r for r in caplog.records if r.name == REQUEST_LOGGER and r.getMessage() == "rerank"]
    assert lines[0].vetted_fields["client"] == "kb-prod" and lines[0].vetted_fields["team"] == "search"
    assert "client" not in lines[1].vetted_fields
    metrics = await (await gateway.get("/metrics")).text()
    assert 'rerank_gateway_client_requests_total{client="kb-prod",status="200",team="search"} 1.0' in metrics
    assert 'rerank_gateway_client_pairs_total{client="kb-prod",team="search"} 5.0' in metrics
    assert "not-a-key" not in metrics
    everything = caplog.text + metrics + repr([r.__dict__ for r in caplog.records])
    for key in KEYS.values():
        assert key not in everything


async def test_status_shows_each_clients_spend_and_rate_against_its_limits(make_gateway: GatewayFactory):
    gateway = await make_gateway(edit=clients(**{"kb-prod": {"limits": {"requests_per_minute": 10},
                                                            "budget": {"daily_usd": 5.0}}}))
    for i in range(2):
        assert (await gateway.post("/v1/rerank", json=fresh(i), headers=bearer("KB_PROD_KEY"))).status == 200
    page = await (await gateway.get("/status")).text()
    table = page[page.index("<h2>Clients</h2>"):]
    row = table[table.index("<td>kb-prod</td>"):].split("</tr>")[0]
    assert "<td>search</td>" in row and " of $5.00" in row and "<td>2 of 10</td>" in row
    assert "<td>ads</td><td>ads</td>" in table and "no limit" in table
    assert not any(key in page for key in KEYS.values())


async def test_spend_by_client_and_team_reads_as_a_table(make_gateway: GatewayFactory):
    from gateway.web.spend_table import format_spend

    gateway = await make_gateway(edit=clients(team_search={"budget": {"daily_usd": 1.0}}))
    assert (await gateway.post("/v1/rerank", json=fresh(0), headers=bearer("KB_PROD_KEY"))).status == 200
    answer = await (await gateway.get("/admin/spend", headers=ADMIN)).json()
    by_client = format_spend(answer, "client").splitlines()
    assert [line.split()[:2] for line in by_client if line.startswith("kb-prod")] == [["kb-prod", "(search)"]] * 2
    by_team = format_spend(answer, "team").splitlines()
    today = next(line for line in by_team if line.startswith("search "))
    assert today.split()[-2] == "1.000000"  # the team's daily budget


async def test_without_its_redis_clients_are_served_and_rates_count_per_process(make_gateway: GatewayFactory):
    """A safeguard must not cost what it protects: keys are checked in-process, budgets fall back to
    the ledger's per-process bound, and rates to this process's own count."""
    from tests.support.processes import free_port

    dead = f"redis://127.0.0.1:{free_port()}"
    gateway = await make_gateway(edit=clients(**{"kb-prod": {"limits": {"requests_per_minute": 2}}}),
                                 cache={"url": dead, "timeout_ms": 50, "ledger_timeout_ms": 50,
                                        "ledger_reserve_timeout_ms": 50})
    statuses = [(await gateway.post("/v1/rerank", json=fresh(i), headers=bearer("KB_PROD_KEY"))).status for i in range(3)]
    assert statuses == [200, 200, 429]
    assert (await gateway.post("/v1/rerank", json=fresh(9), headers=bearer("ADS_KEY"))).status == 200
    assert (await gateway.post("/v1/rerank", json=fresh(9), headers={"Authorization": "Bearer nope"})).status == 401


async def test_the_sliding_minute_weighs_the_previous_minute_by_what_it_still_covers():
    from gateway.clients import MemoryRates, Rate

    now = [59.0]
    rates = MemoryRates(lambda: now[0])
    rpm = [Rate("client:x:requests", 5, "requests", "client x")]
    for _ in range(5):
        assert await rates.admit(rpm, 1) is None
    now[0] = 60.0  # a new minute: the last one still counts whole, no burst of twice the limit
    refused = await rates.admit(rpm, 1)
    assert refused is not None and refused.used == 5 and refused.retry_after_seconds == 12
    now[0] = 90.0  # half of it gone: floor(5 * 0.5) = 2 count
    assert await rates.used(rpm) == [2]
    for _ in range(3):
        assert await rates.admit(rpm, 1) is None
    assert await rates.admit(rpm, 1) is not None


async def test_repeated_wrong_admin_keys_wait_longer_each_time(make_gateway: GatewayFactory):
    gateway = await make_gateway(edit=clients())
    loop = asyncio.get_running_loop()
    waits = []
    for _ in range(4):
        started = loop.time()
        wrong = await gateway.get("/admin/spend", headers={"Authorization": "Bearer guess"})
        waits.append(loop.time() - started)
        assert wrong.status == 401
    # 0.05, 0.1, 0.2, 0.4 s at least (a lower bound: a slow machine only adds to it)
    assert waits[3] >= 0.4
    assert (await gateway.get("/admin/spend", headers=ADMIN)).status == 200  # the right key never waits


async def test_a_client_over_budget_is_refused_even_where_a_lexical_last_resort_is_configured(make_gateway: GatewayFactory):
    gateway = await make_gateway(edit=clients(ads={"budget": {"daily_usd": TINY}}), resilience={"last_resort": "lexical"})
    for i in range(80):
        response = await gateway.post("/v1/rerank", json=fresh(i), headers=bearer("ADS_KEY"))
        assert response.headers["X-Rerank-Provider"] != "degraded-lexical"
        if response.status != 200:
            break
    assert response.status == 429 and (await response.json())["error"]["type"] == "budget_exhausted"


async def test_a_request_in_flight_on_a_revoked_key_finishes(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(edit=clients())
    created = await (await gateway.post("/admin/clients", json={"name": "leaving"}, headers=ADMIN)).json()
    await add_fault(emulator, "deepinfra", "slow", delay_ms=1000, count=1)
    in_flight = asyncio.ensure_future(gateway.post("/v1/rerank", json=fresh(0), headers={
        "Authorization": f"Bearer {created['key']}"}))
    deadline = asyncio.get_running_loop().time() + 10
    while (await emulator_requests(emulator)).get("deepinfra", 0) == 0 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    assert (await gateway.delete("/admin/clients/leaving", headers=ADMIN)).status == 204
    assert (await in_flight).status == 200
    after = await gateway.post("/v1/rerank", json=fresh(1), headers={"Authorization": f"Bearer {created['key']}"})
    assert after.status == 401
