"""Client auth, secrets that never leak, and parsers that answer anything with a result or a 4xx."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.dialects import COHERE_V1, COHERE_V2, DEEPINFRA, FIREWORKS, TEI
from gateway.errors import ClientError
from gateway.models import RerankRequest
from tests.support.gateway import EMULATOR_KEY, GatewayFactory, add_fault

BODY = {"query": "what does it cost?", "documents": ["it is free", "it opens at eight"]}


async def test_client_keys_are_required_when_configured(make_gateway: GatewayFactory, monkeypatch):
    monkeypatch.setenv("GATEWAY_CLIENT_KEYS", "kb-server-key, ops-key")
    gateway = await make_gateway(server={"api_keys_env": "GATEWAY_CLIENT_KEYS"})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "kb-server-key"},
                    {"Authorization": "Basic kb-server-key"}, {"Authorization": "Bearer "}):
        response = await gateway.post("/v1/rerank", json=BODY, headers=headers)
        assert response.status == 401, headers
        assert (await response.json())["error"]["type"] == "unauthorized"
        assert "kb-server-key" not in await response.text()
    for key in ("kb-server-key", "ops-key"):
        response = await gateway.post("/v1/rerank", json=BODY, headers={"Authorization": f"Bearer {key}"})
        assert response.status == 200


async def test_an_empty_key_list_locks_everyone_out_rather_than_opening_up(make_gateway: GatewayFactory, monkeypatch):
    monkeypatch.setenv("GATEWAY_CLIENT_KEYS", " , ")
    gateway = await make_gateway(server={"api_keys_env": "GATEWAY_CLIENT_KEYS"})
    assert (await gateway.post("/v1/rerank", json=BODY, headers={"Authorization": "Bearer "})).status == 401


async def test_provider_keys_never_reach_the_client(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=401)
    await add_fault(emulator, "fireworks", "garbage")
    gateway = await make_gateway()
    response = await gateway.post("/v1/rerank", json=BODY)
    assert response.status == 502
    text = await response.text()
    assert EMULATOR_KEY not in text and EMULATOR_KEY not in str(response.headers)


async def test_no_input_changes_the_upstream_url(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(fallback=["deepinfra"])
    # A model name shaped like a path or a URL is only a name to resolve, never a place to call.
    for model in ("../../admin", "http://evil.example/x", "Qwen/Qwen3-Reranker-8B/../../x"):
        response = await gateway.post(f"/v1/inference/{model}", json={"queries": ["q"], "documents": ["d"]})
        assert response.status == 404
    stats = await (await emulator.get("/_emulator/stats")).json()
    assert sum(stats["requests"].values()) == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
# Bodies shaped roughly like rerank requests, so the parsers get past the first check often.
field_names = st.sampled_from(["query", "queries", "documents", "passages", "texts", "model", "top_n",
                               "return_documents", "instruction", "task", "raw_scores", "return_text"])
rerank_like = st.dictionaries(field_names, json_values | st.lists(st.text(max_size=10), max_size=4), max_size=6)


@pytest.mark.parametrize("dialect", [DEEPINFRA, FIREWORKS, COHERE_V1, COHERE_V2, TEI], ids=lambda d: d.name)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=json_values | rerank_like)
def test_parsers_give_a_request_or_a_client_error_never_anything_else(dialect, payload: Any):
    try:
        request = dialect.decode(payload, {"model": "m"})
    except ClientError as error:
        assert 400 <= error.status < 500 and error.message
        return
    assert isinstance(request, RerankRequest)
    assert len(request.queries) == len(request.documents) > 0
    assert all(isinstance(text, str) for text in (*request.queries, *request.documents))
    assert request.top_n is None or (isinstance(request.top_n, int) and request.top_n >= 1)
    assert request.instruction is None or isinstance(request.instruction, str)
