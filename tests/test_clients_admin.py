"""Clients created, changed, rotated and revoked at run time through /admin/clients, in one process."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.gateway import GatewayFactory
from tests.support.redis_server import RedisServer, own_redis_server

ADMIN = {"Authorization": "Bearer admin-secret"}


def fresh(i: int) -> dict[str, Any]:
    return {"query": f"created client question {i}", "documents": [f"passage {i}-{d}" for d in range(3)]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def with_teams(raw: dict[str, Any]) -> None:
    raw["server"]["admin_key_env"] = "ADMIN_KEY"
    raw["teams"] = {"search": {"limits": {"requests_per_minute": 1000}}}
    raw["clients"] = {"kb-prod": {"key_env": "KB_PROD_KEY", "team": "search"}}


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")
    monkeypatch.setenv("KB_PROD_KEY", "kb-prod-key")


async def create(gateway, **body: Any) -> Any:
    return await gateway.post("/admin/clients", json=body, headers=ADMIN)


async def test_a_created_client_is_served_listed_without_its_key_changed_and_revoked(make_gateway: GatewayFactory):
    gateway = await make_gateway(edit=with_teams)
    created = await create(gateway, name="batch-job", team="search", budget={"daily_usd": 1.0})
    assert created.status == 201
    answer = await created.json()
    key = answer["key"]
    assert key.startswith("rgk_") and answer["team"] == "search" and "restart" in answer["warning"]
    assert (await gateway.post("/v1/rerank", json=fresh(0), headers=bearer(key))).status == 200
    listed = await gateway.get("/admin/clients", headers=ADMIN)
    text = await listed.text()
    assert key not in text
    clients = {client["name"]: client for client in (await listed.json())["clients"]}
    assert clients["batch-job"]["source"] == "admin" and clients["batch-job"]["spend"]["today_usd"] > 0
    assert clients["kb-prod"]["source"] == "config"
    spend = await (await gateway.get("/admin/spend", headers=ADMIN)).json()
    assert spend["clients"]["batch-job"]["today"]["budget_usd"] == 1.0

    changed = await gateway.patch("/admin/clients/batch-job", json={"limits": {"requests_per_minute": 1}}, headers=ADMIN)
    assert changed.status == 200 and (await changed.json())["limits"]["requests_per_minute"] == 1
    assert (await gateway.post("/v1/rerank", json=fresh(1), headers=bearer(key))).status == 200
    limited = await gateway.post("/v1/rerank", json=fresh(2), headers=bearer(key))
    assert limited.status == 429 and "client batch-job" in (await limited.json())["error"]["message"]

    assert (await gateway.delete("/admin/clients/batch-job", headers=ADMIN)).status == 204
    assert (await gateway.post("/v1/rerank", json=fresh(3), headers=bearer(key))).status == 401
    assert (await gateway.delete("/admin/clients/batch-job", headers=ADMIN)).status == 404


async def test_rotation_keeps_the_old_key_for_its_grace_period_only(make_gateway: GatewayFactory):
    gateway = await make_gateway(edit=with_teams)
    old = (await (await create(gateway, name="rotated")).json())["key"]
    graced = await gateway.post("/admin/clients/rotated/rotate", json={"grace_seconds": 600}, headers=ADMIN)
    assert graced.status == 201
    new = (await graced.json())["key"]
    assert new != old
    for key in (old, new):
        assert (await gateway.post("/v1/rerank", json=fresh(0), headers=bearer(key))).status == 200
    newest = (await (await gateway.post("/admin/clients/rotated/rotate", headers=ADMIN)).json())["key"]
    assert (await gateway.post("/v1/rerank", json=fresh(1), headers=bearer(new))).status == 401
    assert (await gateway.post("/v1/rerank", json=fresh(1), headers=bearer(old))).status == 401
    assert (await gateway.post("/v1/rerank", json=fresh(1), headers=bearer(newest))).status == 200


async def test_a_created_client_makes_keys_required(make_gateway: GatewayFactory):
    gateway = await make_gateway(edit=lambda raw: raw["server"].update(admin_key_env="ADMIN_KEY"))
    assert (await gateway.post("/v1/rerank", json=fresh(0))).status == 200  # no client yet: no key asked
    key = (await (await create(gateway, name="first")).json())["key"]
    assert (await gateway.post("/v1/rerank", json=fresh(1))).status == 401
    assert (await gateway.post("/v1/rerank", json=fresh(1), headers=bearer(key))).status == 200


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"team": "search"}, 422, "name: required"),
    ({"name": "x y"}, 422, "name: a name is 1-64 letters"),
    ({"name": "a", "team": "nobody"}, 422, "team: no team named 'nobody'"),
    ({"name": "a", "models": ["gpt-4"]}, 422, "models: 'gpt-4' is no model name or alias here"),
    ({"name": "a", "limits": {"requests_per_minute": -1}}, 422, "limits.requests_per_minute"),
    ({"name": "a", "limits": {"per_hour": 1}}, 422, "limits.per_hour: unknown key"),
    ({"name": "kb-prod"}, 409, "named in the config file"),
])
async def test_bad_clients_are_4xx_naming_the_problem(make_gateway: GatewayFactory, body, status, message):
    gateway = await make_gateway(edit=with_teams)
    refused = await create(gateway, **body)
    assert refused.status == status
    assert message in (await refused.json())["error"]["message"]


async def test_admin_client_endpoints_need_the_admin_key_and_sane_bodies(make_gateway: GatewayFactory):
    gateway = await make_gateway(edit=with_teams)
    assert (await gateway.post("/admin/clients", json={"name": "a"})).status == 401
    assert (await gateway.get("/admin/clients", headers={"Authorization": "Bearer kb-prod-key"})).status == 401
    not_json = await gateway.post("/admin/clients", data=b"{nope", headers=ADMIN)
    assert not_json.status == 400 and "not valid JSON" in (await not_json.json())["error"]["message"]
    assert (await gateway.post("/admin/clients", json=["a"], headers=ADMIN)).status == 422
    assert (await create(gateway, name="twice")).status == 201
    assert (await create(gateway, name="twice")).status == 409
    team = await gateway.patch("/admin/clients/twice", json={"team": "search"}, headers=ADMIN)
    assert team.status == 422 and "only limits and budget change" in (await team.json())["error"]["message"]
    assert (await gateway.patch("/admin/clients/kb-prod", json={"limits": {}}, headers=ADMIN)).status == 409
    assert (await gateway.patch("/admin/clients/nobody", json={"limits": {}}, headers=ADMIN)).status == 404
    bad_grace = await gateway.post("/admin/clients/twice/rotate", json={"grace_seconds": "soon"}, headers=ADMIN)
    assert bad_grace.status == 422


@own_redis_server
async def test_while_redis_is_away_known_clients_keep_working_and_changes_are_refused(
    make_gateway: GatewayFactory, tmp_path,
):
    server = RedisServer(tmp_path)
    server.start()
    try:
        gateway = await make_gateway(edit=with_teams, cache={"url": server.url, "timeout_ms": 100,
                                                             "ledger_timeout_ms": 100, "ledger_reserve_timeout_ms": 100})
        created = await create(gateway, name="made-before", limits={"requests_per_minute": 2})
        assert created.status == 201 and "warning" not in await created.json()  # shared: no warning
        key = (await created.json())["key"]
        server.stop()
        # Keys are checked in this process: the created client and the configured one are served.
        assert (await gateway.post("/v1/rerank", json=fresh(0), headers=bearer(key))).status == 200
        assert (await gateway.post("/v1/rerank", json=fresh(1), headers=bearer("kb-prod-key"))).status == 200
        assert (await gateway.post("/v1/rerank", json=fresh(2), headers=bearer("not-a-key"))).status == 401
        # Rates fall back to this process's own count (the request above was the first of the minute).
        statuses = [(await gateway.post("/v1/rerank", json=fresh(3 + i), headers=bearer(key))).status for i in range(2)]
        assert statuses == [200, 429]
        refused = await create(gateway, name="made-during")
        assert refused.status == 503 and "client not stored" in (await refused.json())["error"]["message"]
    finally:
        server.stop()
