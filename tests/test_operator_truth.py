"""What ops see is what happens (issue 34): a provider refusing our key, budgets spent, refusals that say when."""

from __future__ import annotations

import html
from typing import Any

from gateway.resilience.refusal import RefusalTracker, backoff_seconds
from gateway.web.edge import LIVE
from tests.support.gateway import MODEL, GatewayFactory, add_fault, emulator_requests
from tests.test_ops import samples, value

BODY: dict[str, Any] = {"query": "what does the MFC charge?", "documents": ["it is free", "it opens at eight", "in Kazan"]}


class MovableClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fresh(n: int) -> dict[str, Any]:
    """A request whose pairs no cache holds: the providers must answer it."""
    return {**BODY, "query": f"question {n}"}


async def test_a_provider_answering_403_is_refusing_while_the_other_serves(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=403)
    gateway = await make_gateway()
    first = await gateway.post("/v1/rerank", json=fresh(1))
    assert first.status == 200 and first.headers["X-Rerank-Provider"] == "fireworks"
    second = await gateway.post("/v1/rerank", json=fresh(2))
    assert second.status == 200 and second.headers["X-Rerank-Provider"] == "fireworks"
    # Not asked again inside its back-off: one call, one 403.
    assert (await emulator_requests(emulator)).get("deepinfra") == 1

    ready = await gateway.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["status"] == "ready"
    deepinfra = body["providers"]["deepinfra"]
    assert deepinfra["state"] == "refusing" and deepinfra["status"] == 403 and deepinfra["breaker"] == "closed"
    assert body["providers"]["fireworks"]["state"] == "usable"
    refusing = [w for w in body["warnings"] if w.startswith("provider deepinfra refusing: HTTP 403: ")]
    assert len(refusing) == 1 and "1 in a row" in refusing[0]

    page = await (await gateway.get("/status?refresh=0")).text()
    assert '<span class="pill bad">refusing until ' in page and "HTTP 403: emulated fault" in page
    assert "Every model is servable; providers: 1 refusing" in page  # the banner

    found = samples(await (await gateway.get("/metrics")).text())
    assert value(found, "rerank_gateway_provider_state", provider="deepinfra", state="refusing") == 1
    assert value(found, "rerank_gateway_provider_state", provider="deepinfra", state="usable") == 0
    assert value(found, "rerank_gateway_provider_state", provider="fireworks", state="usable") == 1
    assert value(found, "rerank_gateway_provider_refused_status", provider="deepinfra") == 403
    assert value(found, "rerank_gateway_breaker_state", provider="deepinfra") == 0  # as /readyz says: closed


async def test_a_refusing_provider_is_probed_on_a_growing_back_off_and_serves_again_once_it_answers(
    make_gateway: GatewayFactory, emulator,
):
    gateway = await make_gateway()
    clock = MovableClock()
    health = gateway.app[LIVE].shared.health["deepinfra"]
    health.refusal = RefusalTracker(clock)
    await add_fault(emulator, "deepinfra", "status", status=401)
    assert (await gateway.post("/v1/rerank", json=fresh(1))).headers["X-Rerank-Provider"] == "fireworks"
    clock.now += backoff_seconds(1)  # the first back-off ends: the next request probes, and is refused again
    assert (await gateway.post("/v1/rerank", json=fresh(2))).headers["X-Rerank-Provider"] == "fireworks"
    assert (await emulator_requests(emulator)).get("deepinfra") == 2
    state = (await (await gateway.get("/readyz")).json())["providers"]["deepinfra"]
    assert state["state"] == "refusing" and state["status"] == 401 and "2 in a row" in state["reason"]

    clock.now += backoff_seconds(1)  # half the second back-off: still out
    assert (await gateway.post("/v1/rerank", json=fresh(3))).headers["X-Rerank-Provider"] == "fireworks"
    assert (await emulator_requests(emulator)).get("deepinfra") == 2

    await emulator.delete("/_emulator/faults")  # the key works again
    clock.now += backoff_seconds(2)
    assert (await gateway.post("/v1/rerank", json=fresh(4))).headers["X-Rerank-Provider"] == "deepinfra"
    body = await (await gateway.get("/readyz")).json()
    assert body["providers"]["deepinfra"]["state"] == "usable" and not any("deepinfra" in w for w in body["warnings"])
    page = await (await gateway.get("/status?refresh=0")).text()
    assert "last change: deepinfra answers again after refusing" in page


def test_a_refusal_grows_to_ten_minutes_and_ends_with_the_credentials_it_was_seen_with():
    clock = MovableClock()
    tracker = RefusalTracker(clock)
    waits = []
    for _ in range(8):
        tracker.refused(403, "HTTP 403: plan expired", identity="old-key")
        waits.append(tracker.seconds_until_probe("old-key"))
        clock.now += waits[-1]
        assert tracker.claim_probe("old-key") and not tracker.claim_probe("old-key")  # one probe at a time
    assert waits == [15, 30, 60, 120, 240, 480, 600, 600]
    assert tracker.current("new-key") is None and tracker.claim_probe("new-key")  # another key: tried at once


async def test_every_provider_over_budget_makes_readyz_warn_and_the_banner_say_until_when(make_gateway: GatewayFactory):
    tiny = {"budget": {"daily_usd": 0.0000001}}
    gateway = await make_gateway(providers={"deepinfra": tiny, "fireworks": tiny})
    refused = await gateway.post("/v1/rerank", json=fresh(1))
    assert refused.status == 429 and (await refused.json())["error"]["type"] == "budget_exhausted"
    assert int(refused.headers["Retry-After"]) >= 1

    ready = await gateway.get("/readyz")
    body = await ready.json()
    # Ready: every replica reads the same ledger, and cached pairs are still served.
    assert ready.status == 200 and body["status"] == "ready"
    assert any(w.startswith(f"model {MODEL}: cannot pay for new pairs until ") for w in body["warnings"])
    for provider in ("deepinfra", "fireworks"):
        assert any(w.startswith(f"budget: {provider} daily $1e-07 refuses new pairs until ") for w in body["warnings"])
        assert body["providers"][provider]["state"] == "over_budget"

    page = await (await gateway.get("/status?refresh=0")).text()
    assert f"{MODEL} cannot pay for new pairs until " in page
    assert '<div class="fill bad"' in page  # refusing: red, though nothing was spent
    assert "skipped: deepinfra daily budget of $1e-07 would be exceeded" in html.unescape(page)  # Recent errors


async def test_a_budget_past_its_alert_share_is_a_warning(make_gateway: GatewayFactory):
    gateway = await make_gateway(providers={"deepinfra": {"budget": {"daily_usd": 1.0}}})
    ledger = gateway.app[LIVE].shared.ledger
    from gateway.budget import every_limit

    limits = [limit for limit in every_limit(gateway.app[LIVE].config) if limit.scope == "deepinfra"]
    reservation = await ledger.reserve(limits, 0.85, hold_seconds=60)
    await ledger.settle(reservation, 0.85, 1000)
    body = await (await gateway.get("/readyz")).json()
    assert "budget: deepinfra daily $1 is 85% spent or held, past its alert share of 80%" in body["warnings"]
    assert body["providers"]["deepinfra"]["state"] == "usable"
    page = await (await gateway.get("/status?refresh=0")).text()
    assert '<div class="fill warn"' in page


async def test_one_over_budget_and_one_broken_gives_a_refusal_with_retry_after(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "fireworks", "status", status=500)
    gateway = await make_gateway(
        providers={"deepinfra": {"budget": {"daily_usd": 0.0000001}}},
        resilience={"breaker_consecutive_failures": 1, "max_retries": 0, "breaker_cooldown_seconds": 15},
    )
    first = await gateway.post("/v1/rerank", json=fresh(1))
    error = (await first.json())["error"]
    # fireworks was called and failed: 502; its breaker opened, so when to come back is known.
    assert first.status == 502 and error["type"] == "all_providers_failed", error
    assert 1 <= int(first.headers["Retry-After"]) <= 15
    second = await gateway.post("/v1/rerank", json=fresh(2))  # the panic rule calls fireworks again
    assert second.status == 502 and 1 <= int(second.headers["Retry-After"]) <= 15


async def test_refusing_and_over_budget_is_a_503_with_retry_after(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=403)
    gateway = await make_gateway(providers={"fireworks": {"budget": {"daily_usd": 0.0000001}}})
    first = await gateway.post("/v1/rerank", json=fresh(1))  # deepinfra called: 403
    assert first.status == 502 and 1 <= int(first.headers["Retry-After"]) <= 15
    second = await gateway.post("/v1/rerank", json=fresh(2))  # nobody called: one in back-off, one over budget
    assert second.status == 503 and (await second.json())["error"]["type"] == "providers_unavailable"
    assert 1 <= int(second.headers["Retry-After"]) <= 15
    assert (await emulator_requests(emulator)).get("deepinfra") == 1


async def test_the_unknown_model_404_says_how_to_serve_a_clients_default_name(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    response = await gateway.post("/v1/rerank", json={**BODY, "model": "rerank-english-v3.0"})
    message = (await response.json())["error"]["message"]
    assert response.status == 404 and "`aliases`" in message and '"*"' in message and "rerank-english-v3.0" in message


async def test_a_provider_disabled_on_purpose_is_grey_and_no_warning(make_gateway: GatewayFactory):
    gateway = await make_gateway(providers={"fireworks": {"enabled": False}})
    body = await (await gateway.get("/readyz")).json()
    assert body["providers"]["fireworks"]["state"] == "disabled" and body["warnings"] == []
    page = await (await gateway.get("/status?refresh=0")).text()
    assert '<span class="pill off">disabled</span>' in page and '<tr class="off">' in page
    assert "every provider healthy" in page


async def test_readyz_status_and_metrics_agree_on_a_breaker_whose_cool_down_ended(make_gateway: GatewayFactory, emulator):
    from gateway.resilience import CircuitBreaker

    await add_fault(emulator, "deepinfra", "status", status=500)
    gateway = await make_gateway(resilience={"breaker_consecutive_failures": 1, "max_retries": 0})
    clock = MovableClock()
    health = gateway.app[LIVE].shared.health["deepinfra"]
    health.breaker = CircuitBreaker(health.breaker.config, clock)
    assert (await gateway.post("/v1/rerank", json=fresh(1))).headers["X-Rerank-Provider"] == "fireworks"
    clock.now += health.breaker.config.cooldown_seconds  # nothing is called: the breaker moves by time alone

    found = samples(await (await gateway.get("/metrics")).text())
    ready = (await (await gateway.get("/readyz")).json())["providers"]["deepinfra"]
    page = await (await gateway.get("/status?refresh=0")).text()
    assert value(found, "rerank_gateway_breaker_state", provider="deepinfra") == 1  # half open
    assert ready["breaker"] == "half_open" and ready["state"] == "failing"
    assert ready["reason"] == "breaker half open after: HTTP 500: emulated fault: HTTP 500; the next call is its probe"
    assert '<span class="pill warn">half open</span>' in page and '<span class="pill bad">failing</span>' in page
    assert value(found, "rerank_gateway_provider_state", provider="deepinfra", state="failing") == 1


async def test_a_provider_whose_last_call_failed_is_not_usable_until_one_answers(
        make_gateway: GatewayFactory, emulator):
    """Its breaker still closed (one failure of five), it is still called; but "usable" means its
    recent calls answer, so /readyz, /status and /metrics say `erroring`, with the failure."""
    await add_fault(emulator, "deepinfra", "status", status=500, count=1)
    gateway = await make_gateway()
    served = await gateway.post("/v1/rerank", json=fresh(1))
    assert served.status == 200 and served.headers["X-Rerank-Provider"] == "fireworks"
    body = await (await gateway.get("/readyz")).json()
    deepinfra = body["providers"]["deepinfra"]
    assert (deepinfra["state"], deepinfra["breaker"]) == ("erroring", "closed")
    assert "its last call failed" in deepinfra["reason"] and "500" in deepinfra["reason"]
    assert any(w.startswith("provider deepinfra erroring: its last call failed") for w in body["warnings"])
    assert body["status"] == "ready" and body["models"][MODEL]["deepinfra"] == "usable"  # still in the plan
    page = await (await gateway.get("/status?refresh=0")).text()
    assert '<span class="pill warn">erroring' in page
    found = samples(await (await gateway.get("/metrics")).text())
    assert value(found, "rerank_gateway_provider_state", provider="deepinfra", state="erroring") == 1

    answered = await gateway.post("/v1/rerank", json=fresh(2))
    assert answered.status == 200 and answered.headers["X-Rerank-Provider"] == "deepinfra"
    assert (await (await gateway.get("/readyz")).json())["providers"]["deepinfra"]["state"] == "usable"
