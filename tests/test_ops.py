"""The operator endpoints on a running gateway: /metrics, /readyz, /status, /openapi.json, logs."""

from __future__ import annotations

import json
import logging
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.logs import REQUEST_LOGGER, JsonFormatter
from tests.support.gateway import EMULATOR_KEY, GatewayFactory, add_fault

BODY: dict[str, Any] = {"query": "what does the MFC charge?", "documents": ["it is free", "it opens at eight", "it is in Kazan"]}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_requests_cache_upstream_and_fallbacks(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(resilience={"max_retries": 0})
    await gateway.post("/v1/rerank", json=BODY)
    await gateway.post("/v1/rerank", json=BODY)  # all cached
    await add_fault(emulator, "deepinfra", "status", status=500, count=1)
    await gateway.post("/v1/rerank", json={**BODY, "query": "another question"})
    await gateway.post("/v1/rerank", json={"query": "q"})  # 422
    response = await gateway.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    found = samples(await response.text())
    model = "qwen3-reranker-8b"
    assert value(found, "rerank_gateway_requests_total", dialect="cohere-v1", model=model, status="200") == 3
    assert value(found, "rerank_gateway_requests_total", dialect="cohere-v1", model="none", status="422") == 1
    assert value(found, "rerank_gateway_cache_hits_total", model=model) == 3
    assert value(found, "rerank_gateway_cache_misses_total", model=model) == 6
    assert value(found, "rerank_gateway_upstream_calls_total", provider="deepinfra", purpose="request") == 2
    assert value(found, "rerank_gateway_upstream_errors_total", provider="deepinfra", reason="http_5xx") == 1
    assert value(found, "rerank_gateway_fallbacks_total", model=model, from_provider="deepinfra", to_provider="fireworks") == 1
    assert value(found, "rerank_gateway_upstream_tokens_total", provider="deepinfra") > 0
    assert value(found, "rerank_gateway_overhead_seconds_count") == 4
    assert value(found, "rerank_gateway_breaker_state", provider="deepinfra") == 0


async def test_readyz_says_what_is_not_ready(make_gateway: GatewayFactory, monkeypatch):
    gateway = await make_gateway()
    response = await gateway.get("/readyz")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ready" and body["models"]["qwen3-reranker-8b"]["deepinfra"] == "usable"

    monkeypatch.delenv("EMULATOR_KEY")
    gateway = await make_gateway()
    response = await gateway.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert "model qwen3-reranker-8b: no usable provider" in body["problems"]
    assert "no API key" in body["models"]["qwen3-reranker-8b"]["deepinfra"]


async def test_readyz_reports_an_unreachable_redis(make_gateway: GatewayFactory, unused_tcp_port):
    gateway = await make_gateway(cache={"url": f"redis://127.0.0.1:{unused_tcp_port}/0", "timeout_ms": 100})
    response = await gateway.get("/readyz")
    assert response.status == 503
    assert any(problem.startswith("redis") for problem in (await response.json())["problems"])


async def test_readyz_counts_an_open_breaker(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=500)
    gateway = await make_gateway(resilience={"breaker_consecutive_failures": 1, "max_retries": 0})
    await gateway.post("/v1/rerank", json=BODY)
    body = await (await gateway.get("/readyz")).json()
    # Ready (fireworks serves), with the reason the breaker opened in the warnings.
    assert body["status"] == "ready" and len(body["warnings"]) == 1
    assert body["warnings"][0].startswith(
        "provider deepinfra failing: breaker open after: HTTP 500: emulated fault: HTTP 500; next probe in ")
    assert body["models"]["qwen3-reranker-8b"] == {
        "deepinfra": "circuit open after repeated failures: HTTP 500: emulated fault: HTTP 500", "fireworks": "usable",
    }
    assert body["providers"]["deepinfra"]["state"] == "failing" and body["providers"]["deepinfra"]["breaker"] == "open"
    page = await (await gateway.get("/status?refresh=0")).text()
    assert "last change: deepinfra breaker open: HTTP 500: emulated fault: HTTP 500" in page
    assert '<span class="pill bad">open</span>' in page and "breaker open after: HTTP 500" in page


async def test_readyz_stays_ready_under_the_panic_rule(make_gateway: GatewayFactory, emulator):
    """Every breaker open is a joint outage, not a reason to take the gateway out of rotation:
    requests still reach the provider whose breaker opened first."""
    await add_fault(emulator, "*", "status", status=500)
    gateway = await make_gateway(resilience={"breaker_consecutive_failures": 1, "max_retries": 0})
    await gateway.post("/v1/rerank", json=BODY)
    response = await gateway.get("/readyz")
    body = await response.json()
    assert response.status == 200 and body["status"] == "ready"
    assert body["warnings"][0] == "model qwen3-reranker-8b: every breaker is open; panic rule routing to deepinfra"
    assert [w.split(":")[0] for w in body["warnings"][1:]] == ["provider deepinfra failing", "provider fireworks failing"]
    assert body["models"]["qwen3-reranker-8b"]["fireworks"].startswith("circuit open after repeated failures: HTTP 500")
    page = await (await gateway.get("/status")).text()
    assert "panic: every breaker is open, so requests go to deepinfra" in page


async def test_status_page_shows_the_live_state(make_gateway: GatewayFactory, emulator):
    def budgets(raw: dict[str, Any]) -> None:
        raw["providers"]["fireworks"]["budget"] = {"daily_usd": 5.0, "monthly_usd": 100.0}

    gateway = await make_gateway(edit=budgets, resilience={"max_retries": 0})
    await gateway.post("/v1/rerank", json=BODY)
    await gateway.post("/v1/rerank", json=BODY)
    await add_fault(emulator, "deepinfra", "status", status=503, count=1)
    await gateway.post("/v1/rerank", json={**BODY, "query": "third"})
    response = await gateway.get("/status")
    assert response.status == 200 and response.content_type == "text/html"
    page = await response.text()
    for fact in ("qwen3-reranker-8b", "deepinfra", "fireworks", "HTTP 503", "$5", "closed"):
        assert fact in page, fact
    assert EMULATOR_KEY not in page


async def test_openapi_is_served(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    spec = await (await gateway.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1") and "/v1/rerank" in spec["paths"]


async def test_one_json_log_line_per_request_without_texts_or_keys(make_gateway: GatewayFactory, caplog):
    gateway = await make_gateway()
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        await gateway.post("/v1/rerank", json=BODY, headers={"X-Request-ID": "log-1"})
    records = [r for r in caplog.records if r.name == REQUEST_LOGGER]
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["request_id"] == "log-1" and line["status"] == 200 and line["documents"] == 3
    assert line["dialect"] == "cohere-v1" and line["model"] == "qwen3-reranker-8b"
    assert line["providers"][0]["provider"] == "deepinfra" and line["providers"][0]["outcome"] == "ok"
    assert line["cache_misses"] == 3 and line["total_ms"] >= line["upstream_ms"] > 0
    text = json.dumps(line)
    assert BODY["query"] not in text and "it is free" not in text and EMULATOR_KEY not in text


async def test_metrics_show_the_budget_left_in_each_limited_window(make_gateway: GatewayFactory):
    def budgets(raw: dict[str, Any]) -> None:
        raw["providers"]["deepinfra"]["budget"] = {"daily_usd": 1.0}
        raw["budget"] = {"monthly_usd": 10.0}

    gateway = await make_gateway(edit=budgets)
    await gateway.post("/v1/rerank", json=BODY)
    found = samples(await (await gateway.get("/metrics")).text())
    left_today = value(found, "rerank_gateway_budget_remaining_usd", scope="deepinfra", window="day")
    assert 0.99 < left_today < 1.0  # one call's cost spent
    assert 9.99 < value(found, "rerank_gateway_budget_remaining_usd", scope="gateway", window="month") < 10.0
    assert ("rerank_gateway_budget_remaining_usd", (("scope", "fireworks"), ("window", "day"))) not in found
