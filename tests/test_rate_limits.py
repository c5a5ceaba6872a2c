"""A 429's Retry-After: every request passes the limited provider over until then, the one that got
the 429 moves on at once, the breaker never counts it, and the provider is called again once it lifts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.support.gateway import GatewayFactory, add_fault, emulator_requests

RETRY_AFTER = 5
WITHIN_SECONDS = 15.0  # a bound for a hung test, not a performance claim


def fresh(i: int) -> dict[str, Any]:
    return {"query": f"what does bankruptcy cost? ({i})", "documents": [f"bankruptcy is free ({i})", f"the MFC ({i})"]}


async def provider_of(gateway, i: int) -> str:
    response = await gateway.post("/v1/rerank", json=fresh(i))
    assert response.status == 200, await response.text()
    return response.headers["X-Rerank-Provider"]


@pytest.mark.slow
async def test_a_rate_limited_provider_is_passed_over_until_its_retry_after_then_called_again(
    make_gateway: GatewayFactory, emulator
):
    await add_fault(emulator, "deepinfra", "status", status=429, retry_after=RETRY_AFTER, count=1)
    gateway = await make_gateway(fallback=["deepinfra", "fireworks"], resilience={"breaker_consecutive_failures": 1})
    limited_at = time.monotonic()
    assert await provider_of(gateway, 0) == "fireworks"  # the 429'd request moved on at once
    seconds = []
    for i in range(1, 6):
        started = time.monotonic()
        assert await provider_of(gateway, i) == "fireworks"
        seconds.append(time.monotonic() - started)
    print(f"\nanswers during the Retry-After: {', '.join(f'{s * 1000:.0f} ms' for s in seconds)}")
    assert (await emulator_requests(emulator))["deepinfra"] == 1  # no call while limited

    ready = await gateway.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and any("deepinfra rate limited" in w for w in body["warnings"])
    metrics = await (await gateway.get("/metrics")).text()
    assert 'rerank_gateway_upstream_errors_total{provider="deepinfra",reason="rate_limited"} 5.0' in metrics
    assert "rate limited" in await (await gateway.get("/status")).text()

    i = 6
    while (provider := await provider_of(gateway, i)) != "deepinfra":
        assert time.monotonic() - limited_at < RETRY_AFTER + WITHIN_SECONDS
        i += 1
        await asyncio.sleep(0.1)
    back_after = time.monotonic() - limited_at
    print(f"deepinfra called again {back_after:.2f} s after its 429 (Retry-After: {RETRY_AFTER})")
    # One 429 with a breaker that opens on one failure: had it counted, deepinfra would be out for
    # the breaker's 15 s cool-down, not its Retry-After.
    assert back_after >= RETRY_AFTER - 0.1 and provider == "deepinfra"
    assert body["models"]["qwen3-reranker-8b"]["deepinfra"].startswith("rate limited")


async def test_429s_never_open_the_breaker(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=429, count=3)  # no Retry-After: rate_limit_seconds
    gateway = await make_gateway(fallback=["deepinfra", "fireworks"],
                                 resilience={"breaker_consecutive_failures": 2, "rate_limit_seconds": 0.05})
    for i in range(3):
        assert await provider_of(gateway, i) == "fireworks"
        await asyncio.sleep(0.06)  # past the limit: the next request calls deepinfra again
    assert await provider_of(gateway, 3) == "deepinfra"
    assert (await emulator_requests(emulator))["deepinfra"] == 4
    body = await (await gateway.get("/readyz")).json()
    assert body["models"]["qwen3-reranker-8b"]["deepinfra"] == "usable"


async def test_when_every_provider_is_limited_a_request_waits_if_that_fits_its_deadline(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=429, retry_after=1, count=1)
    await add_fault(emulator, "fireworks", "status", status=429, retry_after=30, count=1)
    gateway = await make_gateway(fallback=["deepinfra", "fireworks"], server={"request_timeout_seconds": 10})
    assert await provider_of(gateway, 0) == "deepinfra"  # waited out deepinfra's 1 s: fireworks' 30 s would not fit
    calls = await emulator_requests(emulator)
    assert calls == {**calls, "deepinfra": 2, "fireworks": 1}


async def test_a_wait_that_does_not_fit_the_deadline_is_not_made(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=429, retry_after=30, count=1)
    gateway = await make_gateway(fallback=["deepinfra"], server={"request_timeout_seconds": 5})
    response = await gateway.post("/v1/rerank", json=fresh(0))
    assert response.status == 502
    assert "429" in (await response.json())["error"]["message"]
