"""Small HTTP details a client or an operator relies on (issue 18 item 2), each over a real socket."""

from __future__ import annotations

import logging

from gateway.observability.logs import REQUEST_LOGGER
from tests.support.gateway import MODEL, GatewayFactory

BODY = {"query": "what does it cost?", "documents": ["it is free", "it opens at eight"]}


async def test_a_401_names_the_bearer_scheme(make_gateway: GatewayFactory, monkeypatch):
    monkeypatch.setenv("GATEWAY_CLIENT_KEYS", "kb-server-key")
    gateway = await make_gateway(server={"api_keys_env": "GATEWAY_CLIENT_KEYS"})
    response = await gateway.post("/v1/rerank", json=BODY)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    accepted = await gateway.post("/v1/rerank", json=BODY, headers={"Authorization": "Bearer kb-server-key"})
    assert accepted.status == 200 and "WWW-Authenticate" not in accepted.headers


async def test_a_byte_order_mark_before_the_json_is_accepted(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    body = b'\xef\xbb\xbf{"query": "what does it cost?", "documents": ["it is free", "it opens at eight"]}'
    with_bom = await gateway.post("/v1/rerank", data=body, headers={"Content-Type": "application/json"})
    assert with_bom.status == 200, await with_bom.text()
    without = await gateway.post("/v1/rerank", json=BODY)
    assert [r["relevance_score"] for r in (await with_bom.json())["results"]] == [
        r["relevance_score"] for r in (await without.json())["results"]]
    # Invalid UTF-8 elsewhere is still named as such.
    broken = await gateway.post("/v1/rerank", data=b'\xef\xbb\xbf{"query": "\xff", "documents": ["a"]}')
    assert broken.status == 400 and "not valid UTF-8" in (await broken.json())["error"]["message"]


async def test_a_bad_request_timeout_header_carries_no_model(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    response = await gateway.post("/v1/rerank", json={**BODY, "model": MODEL}, headers={"X-Request-Timeout": "soon"})
    assert response.status == 400
    assert "X-Request-Timeout" in (await response.json())["error"]["message"]
    assert "X-Rerank-Model" not in response.headers
    assert response.headers["X-Rerank-Provider"] == "none"


async def test_a_502_of_skipped_providers_lists_them_in_the_request_log(make_gateway: GatewayFactory, caplog):
    def keyless(raw):
        for name in ("deepinfra", "fireworks"):
            raw["providers"][name]["api_key_env"] = "RERANK_GATEWAY_TEST_UNSET_KEY"

    gateway = await make_gateway(edit=keyless)
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        response = await gateway.post("/v1/rerank", json=BODY)
    assert response.status == 502, await response.text()
    fields = next(r for r in caplog.records if r.getMessage() == "rerank").vetted_fields
    assert fields["status"] == 502
    assert [(p["provider"], p["outcome"]) for p in fields["providers"]] == [
        ("deepinfra", "unusable"), ("fireworks", "unusable")]
