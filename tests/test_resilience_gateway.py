"""Retries, circuit breakers, hedging and the lexical last resort, in the request path."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.emulator import emulated_score
from tests.support.gateway import GatewayFactory, add_fault, emulator_requests

QUERY = "how much does bankruptcy through the MFC cost?"
DOCS = ["Out-of-court bankruptcy through the MFC is free.", "The MFC in Kazan opens at 8:00.", "Weather in May."]


def fresh(i: int) -> dict[str, Any]:
    return {"query": f"{QUERY} ({i})", "documents": [f"{d} ({i})" for d in DOCS]}


def expected(body: dict[str, Any]) -> dict[int, float]:
    return {i: emulated_score(body["query"], d) for i, d in enumerate(body["documents"])}


def scores(answer: dict[str, Any]) -> dict[int, float]:
    return {item["index"]: item["relevance_score"] for item in answer["results"]}


# 429 is not among them: a rate limit sends the request on at once (tests/test_rate_limits.py).
@pytest.mark.parametrize("status", [502, 503, 504])
async def test_transient_failures_are_retried_on_the_same_provider(make_gateway: GatewayFactory, emulator, status):
    await add_fault(emulator, "deepinfra", "status", status=status, count=2)
    gateway = await make_gateway(resilience={"max_retries": 2, "retry_base_ms": 1})
    response = await gateway.post("/v1/rerank", json=fresh(1))
    assert response.status == 200 and response.headers["X-Rerank-Provider"] == "deepinfra"
    assert scores(await response.json()) == pytest.approx(expected(fresh(1)), abs=1e-12)
    calls = await emulator_requests(emulator)
    assert calls["deepinfra"] == 3 and calls["fireworks"] == 0


async def test_connection_drops_are_retried(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "drop", count=1)
    gateway = await make_gateway(resilience={"max_retries": 1, "retry_base_ms": 1})
    response = await gateway.post("/v1/rerank", json=fresh(2))
    assert response.headers["X-Rerank-Provider"] == "deepinfra"
    assert (await emulator_requests(emulator))["deepinfra"] == 2


@pytest.mark.parametrize("status", [500, 401])
async def test_other_failures_move_on_without_a_retry(make_gateway: GatewayFactory, emulator, status):
    await add_fault(emulator, "deepinfra", "status", status=status, count=1)
    gateway = await make_gateway(resilience={"max_retries": 2, "retry_base_ms": 1})
    response = await gateway.post("/v1/rerank", json=fresh(3))
    assert response.headers["X-Rerank-Provider"] == "fireworks"
    assert (await emulator_requests(emulator))["deepinfra"] == 1


async def test_retry_after_is_honoured_when_no_other_provider_can_answer(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=429, retry_after=1, count=1)
    gateway = await make_gateway(fallback=["deepinfra"], resilience={"max_retries": 1, "retry_base_ms": 1})
    started = time.monotonic()
    response = await gateway.post("/v1/rerank", json=fresh(4))
    assert response.headers["X-Rerank-Provider"] == "deepinfra"
    assert time.monotonic() - started >= 1.0  # it waited as asked rather than hammering


async def test_retry_after_beyond_the_deadline_moves_to_the_next_provider(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=429, retry_after=30, count=1)
    gateway = await make_gateway(resilience={"max_retries": 2, "retry_base_ms": 1}, server={"request_timeout_seconds": 5})
    started = time.monotonic()
    response = await gateway.post("/v1/rerank", json=fresh(5))
    assert response.headers["X-Rerank-Provider"] == "fireworks"
    assert time.monotonic() - started < 4
    assert (await emulator_requests(emulator))["deepinfra"] == 1


async def test_the_retry_budget_stops_retries_from_multiplying_an_outage(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=503)
    gateway = await make_gateway(
        fallback=["deepinfra", "fireworks"],
        resilience={"max_retries": 3, "retry_base_ms": 1, "retry_budget_ratio": 0.2, "breaker_consecutive_failures": 1000,
                    "breaker_min_calls": 1000},
    )
    for i in range(40):
        assert (await gateway.post("/v1/rerank", json=fresh(100 + i))).status == 200
    deepinfra_calls = (await emulator_requests(emulator))["deepinfra"]
    # 40 first tries; retries capped near 20% of calls (plus a small floor), not 3 per call.
    assert 40 <= deepinfra_calls <= 40 + 0.2 * 40 + 3


async def test_the_breaker_opens_and_skips_a_failing_provider_at_once(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=500)
    gateway = await make_gateway(resilience={"breaker_consecutive_failures": 3, "breaker_cooldown_seconds": 60})
    for i in range(10):
        response = await gateway.post("/v1/rerank", json=fresh(200 + i))
        assert response.headers["X-Rerank-Provider"] == "fireworks"
    assert (await emulator_requests(emulator))["deepinfra"] == 3

    await add_fault(emulator, "fireworks", "status", status=500)
    response = await gateway.post("/v1/rerank", json=fresh(300))
    assert response.status == 502
    assert "deepinfra: skipped: circuit open" in (await response.json())["error"]["message"]


async def test_after_the_cool_down_one_probe_closes_the_breaker(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=500, count=3)
    gateway = await make_gateway(resilience={"breaker_consecutive_failures": 3, "breaker_cooldown_seconds": 1.0})
    for i in range(3):
        await gateway.post("/v1/rerank", json=fresh(400 + i))
    # A cool-down long enough that a busy machine cannot let it run out before this request.
    assert (await gateway.post("/v1/rerank", json=fresh(410))).headers["X-Rerank-Provider"] == "fireworks"
    await asyncio.sleep(1.1)
    assert (await gateway.post("/v1/rerank", json=fresh(420))).headers["X-Rerank-Provider"] == "deepinfra"
    assert (await gateway.post("/v1/rerank", json=fresh(421))).headers["X-Rerank-Provider"] == "deepinfra"


async def test_a_bad_client_request_does_not_open_the_breaker(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=400, count=5)
    gateway = await make_gateway(resilience={"breaker_consecutive_failures": 2})
    for i in range(5):
        assert (await gateway.post("/v1/rerank", json=fresh(500 + i))).status == 502
    assert (await gateway.post("/v1/rerank", json=fresh(510))).headers["X-Rerank-Provider"] == "deepinfra"


async def test_hedging_sends_a_slow_request_to_the_next_provider(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "slow", delay_ms=2000, count=1)
    gateway = await make_gateway(resilience={"hedge": 100})
    started = time.monotonic()
    response = await gateway.post("/v1/rerank", json=fresh(600))
    elapsed = time.monotonic() - started
    assert response.status == 200 and response.headers["X-Rerank-Provider"] == "fireworks"
    assert scores(await response.json()) == pytest.approx(expected(fresh(600)), abs=1e-12)
    assert elapsed < 1.5  # the hedge answered; the slow call was not waited for
    calls = await emulator_requests(emulator)
    assert calls == {**calls, "deepinfra": 1, "fireworks": 1}


async def test_no_hedge_when_the_first_answers_in_time(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(resilience={"hedge": 2000})
    response = await gateway.post("/v1/rerank", json=fresh(700))
    assert response.headers["X-Rerank-Provider"] == "deepinfra"
    assert (await emulator_requests(emulator))["fireworks"] == 0


async def test_without_hedging_a_slow_provider_is_waited_for(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "slow", delay_ms=300, count=1)
    gateway = await make_gateway()
    response = await gateway.post("/v1/rerank", json=fresh(800))
    assert response.headers["X-Rerank-Provider"] == "deepinfra"
    assert (await emulator_requests(emulator))["fireworks"] == 0


async def test_p95_hedging_waits_for_samples_then_hedges_outliers(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(resilience={"hedge": "p95", "hedge_min_ms": 50})
    for i in range(25):  # enough samples for a p95
        await gateway.post("/v1/rerank", json=fresh(900 + i))
    await add_fault(emulator, "deepinfra", "slow", delay_ms=2000, count=1)
    response = await gateway.post("/v1/rerank", json=fresh(999))
    assert response.headers["X-Rerank-Provider"] == "fireworks"


@pytest.mark.parametrize("path, body_of, flag", [
    ("/v1/rerank", lambda b: b, lambda a: a["meta"]["warnings"][0].startswith("degraded-lexical")),
    ("/inference/v1/rerank", lambda b: b, lambda a: a["degraded"] is True),
    ("/v1/inference/Qwen/Qwen3-Reranker-8B", lambda b: {"queries": [b["query"]], "documents": b["documents"]},
     lambda a: a["degraded"] is True),
    ("/rerank", lambda b: {"query": b["query"], "texts": b["documents"]}, lambda a: isinstance(a, list)),
])
async def test_lexical_last_resort_when_every_provider_failed(make_gateway: GatewayFactory, emulator, path, body_of, flag):
    await add_fault(emulator, "*", "status", status=500)
    gateway = await make_gateway(resilience={"last_resort": "lexical"})
    body = {"query": "bankruptcy through the MFC cost", "documents": DOCS}
    response = await gateway.post(path, json=body_of(body))
    assert response.status == 200
    assert response.headers["X-Rerank-Provider"] == "degraded-lexical"
    assert response.headers["X-Rerank-Cache"] == f"hits=0; misses={len(DOCS)}"  # nothing came from the cache
    answer = await response.json()
    assert flag(answer)

    # Never cached: once the providers are back, the same request is scored by a model.
    await emulator.delete("/_emulator/faults")
    response = await gateway.post(path, json=body_of(body))
    assert response.headers["X-Rerank-Provider"] == "deepinfra"


async def test_lexical_order_puts_the_matching_passage_first(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "*", "status", status=500)
    gateway = await make_gateway(resilience={"last_resort": "lexical"})
    response = await gateway.post("/v1/rerank", json={"query": "bankruptcy through the MFC free", "documents": DOCS})
    results = (await response.json())["results"]
    assert results[0]["index"] == 0
    assert all(0.0 <= item["relevance_score"] <= 1.0 for item in results)


async def test_without_last_resort_every_failure_is_an_error(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "*", "status", status=500)
    gateway = await make_gateway()
    assert (await gateway.post("/v1/rerank", json=fresh(1))).status == 502
