"""The quality guard over real sockets: probes, skipping a mis-served provider, never mixing
scores that disagree, sharing those that agree, and shadow calls that never delay an answer.

The emulator misbehaves quietly on demand: `template` (another prompt template: the order
changes), `rescale` (another scale: the order stays, the values do not), `random`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from gateway.emulator import emulated_score, misbehaving_score
from gateway.models import Usage
from gateway.quality import builtin_canary
from gateway.quality.board import QualityBoard
from gateway.quality.judge import judge
from gateway.quality.probe import CanaryOutcome
from tests.support.gateway import MODEL, GatewayFactory, add_fault, emulator_requests
from tests.support.polling import eventually

QUERY = "bankruptcy through the MFC cost"
OLD = [f"passage {i}: bankruptcy MFC note {i}" if i % 2 else f"passage {i}: weather in Kazan {i}" for i in range(10)]
NEW = [f"new passage {i}: MFC bankruptcy cost {i}" if i % 3 else f"new passage {i}: a recipe {i}" for i in range(10)]


def probing(**quality: Any):
    """Probes on (at start only: a long interval), with these quality settings."""
    def edit(raw: dict[str, Any]) -> None:
        raw["models"][MODEL]["quality"] = {"probe_interval_seconds": 3600, **quality}
    return edit


async def readiness(gateway) -> dict[str, Any]:
    return await (await gateway.get("/readyz")).json()


async def probed(gateway, providers=("deepinfra", "fireworks")) -> dict[str, Any]:
    """/readyz's quality section once every provider has a verdict."""
    deadline = time.monotonic() + 10
    while True:
        quality = (await readiness(gateway))["quality"][MODEL]
        if all(quality[p]["state"] != "unknown" for p in providers):
            return quality
        assert time.monotonic() < deadline, f"providers never probed: {quality}"
        await asyncio.sleep(0.05)


async def rerank(gateway, documents: list[str]):
    response = await gateway.post("/v1/inference/Qwen/Qwen3-Reranker-8B", json={"queries": [QUERY], "documents": documents})
    assert response.status == 200, await response.text()
    return response, (await response.json())["scores"]


async def test_a_mis_served_provider_is_skipped_and_says_why(make_gateway: GatewayFactory, emulator, caplog):
    await add_fault(emulator, "deepinfra", "template")
    with caplog.at_level(logging.WARNING, logger="gateway.quality"):
        gateway = await make_gateway(edit=probing())
        quality = await probed(gateway)
    assert quality["deepinfra"]["state"] == "failing" and "margin" in quality["deepinfra"]["reason"]
    assert quality["fireworks"] == {**quality["fireworks"], "state": "passing", "reference": True}
    assert (await readiness(gateway))["models"][MODEL]["deepinfra"].startswith("failed its canary: failed ")
    warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.quality"]
    assert len(warnings) == 1 and warnings[0].startswith("provider deepinfra of model qwen3-reranker-8b fails its canary")

    response, scores = await rerank(gateway, OLD)
    assert response.headers["X-Rerank-Provider"] == "fireworks"
    assert scores == pytest.approx([emulated_score(QUERY, d) for d in OLD], abs=1e-12)
    assert (await emulator_requests(emulator)).get("deepinfra", 0) == 1  # the probe, nothing since

    metrics = await (await gateway.get("/metrics")).text()
    assert 'rerank_gateway_provider_quality{model="qwen3-reranker-8b",provider="deepinfra"} 0.0' in metrics
    assert 'rerank_gateway_provider_quality{model="qwen3-reranker-8b",provider="fireworks"} 1.0' in metrics
    page = await (await gateway.get("/status")).text()
    assert "canary failing" in page and "canary passing" in page


async def test_warn_only_reports_and_keeps_the_provider_apart(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "template")
    gateway = await make_gateway(edit=probing(action="warn"))
    quality = await probed(gateway)
    assert quality["deepinfra"]["state"] == "failing" and not quality["deepinfra"]["shares_cache"]
    response, scores = await rerank(gateway, OLD)
    assert response.headers["X-Rerank-Provider"] == "deepinfra"  # reported, not skipped
    assert scores == pytest.approx([misbehaving_score("template", QUERY, d) for d in OLD], abs=1e-12)


@pytest.mark.parametrize("mode", ["rescale", "template"])
async def test_disagreeing_providers_are_never_mixed(make_gateway: GatewayFactory, emulator, mode):
    """The issue's case: 10 passages cached from DeepInfra, DeepInfra down, 10 new ones: Fireworks
    (another scale, or another template) scores all 20, so the answer is one provider's order."""
    await add_fault(emulator, "fireworks", mode)
    gateway = await make_gateway(edit=probing(action="warn"),
                                 resilience={"max_retries": 0, "breaker_consecutive_failures": 1})
    quality = await probed(gateway)
    assert not quality["fireworks"]["shares_cache"]
    if mode == "rescale":
        assert quality["fireworks"]["state"] == "passing" and quality["fireworks"]["mae"] > 0.05
        assert quality["fireworks"]["kendall_tau"] > 0.9  # the same order: only the scale differs

    response, _ = await rerank(gateway, OLD)
    assert response.headers["X-Rerank-Provider"] == "deepinfra"
    await add_fault(emulator, "deepinfra", "status", status=500)
    before = (await emulator_requests(emulator)).get("fireworks", 0)

    response, scores = await rerank(gateway, OLD + NEW)
    assert response.headers["X-Rerank-Provider"] == "fireworks"
    assert response.headers["X-Rerank-Cache"] == "hits=0; misses=20"
    assert scores == pytest.approx([misbehaving_score(mode, QUERY, d) for d in OLD + NEW], abs=1e-12)
    assert (await emulator_requests(emulator))["fireworks"] == before + 1

    # Fireworks' own scores are cached apart: with DeepInfra's breaker open, the same request
    # reads Fireworks' group and is served from them, never from DeepInfra's.
    response, again = await rerank(gateway, OLD + NEW)
    assert response.headers["X-Rerank-Cache"] == "hits=20; misses=0" and again == scores


async def test_agreeing_providers_still_pay_only_for_missing_pairs(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(edit=probing(), resilience={"max_retries": 0})
    quality = await probed(gateway)
    assert quality["fireworks"]["shares_cache"] and quality["fireworks"]["mae"] == 0.0
    await rerank(gateway, OLD)
    await add_fault(emulator, "deepinfra", "status", status=500)
    stats_before = await (await emulator.get("/_emulator/stats")).json()

    response, scores = await rerank(gateway, OLD + NEW)
    assert response.headers["X-Rerank-Provider"] == "fireworks"
    assert response.headers["X-Rerank-Cache"] == "hits=10; misses=10"
    assert scores == pytest.approx([emulated_score(QUERY, d) for d in OLD + NEW], abs=1e-12)
    stats = await (await emulator.get("/_emulator/stats")).json()
    assert stats["documents"]["fireworks"] - stats_before["documents"].get("fireworks", 0) == 10


async def test_without_a_verdict_the_fallback_provider_scores_whole_requests(make_gateway: GatewayFactory, emulator):
    """Probes off: agreement is never known, so Fireworks never mixes with DeepInfra's cache."""
    gateway = await make_gateway(resilience={"max_retries": 0})
    await rerank(gateway, OLD)
    await add_fault(emulator, "deepinfra", "status", status=500)
    response, _ = await rerank(gateway, OLD + NEW)
    assert response.headers["X-Rerank-Provider"] == "fireworks"
    assert response.headers["X-Rerank-Cache"] == "hits=0; misses=20"


async def test_shadow_calls_never_delay_the_answer_and_feed_agreement(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "fireworks", "slow", delay_ms=1500)
    gateway = await make_gateway(edit=probing(shadow_rate=1.0, probe_interval_seconds=0))
    started = time.perf_counter()
    response, _ = await rerank(gateway, OLD)
    assert response.headers["X-Rerank-Provider"] == "deepinfra"
    assert time.perf_counter() - started < 1.0, "the answer waited for the shadow call"

    deadline = time.monotonic() + 10
    while (quality := (await readiness(gateway))["quality"][MODEL]["fireworks"])["mae"] is None:
        assert time.monotonic() < deadline, "the shadow call never fed the agreement figures"
        await asyncio.sleep(0.1)
    assert quality["mae"] == 0.0 and quality["kendall_tau"] == pytest.approx(1.0)
    assert quality["shares_cache"]  # agreement measured by shadow traffic alone, within tolerance
    metrics = await (await gateway.get("/metrics")).text()
    assert 'rerank_gateway_provider_agreement{measure="mae",model="qwen3-reranker-8b",provider="fireworks"} 0.0' in metrics


async def test_probes_are_real_calls_under_budgets(make_gateway: GatewayFactory, emulator):
    def budget(raw: dict[str, Any]) -> None:
        probing()(raw)
        raw["providers"]["fireworks"]["budget"] = {"daily_usd": 0.0}

    gateway = await make_gateway(edit=budget)
    await probed(gateway, providers=("deepinfra",))
    quality = (await readiness(gateway))["quality"][MODEL]
    assert quality["fireworks"]["state"] == "unknown" and "budget" in quality["fireworks"]["reason"]
    metrics = await (await gateway.get("/metrics")).text()  # the probe's tokens are counted like any call's
    tokens = [line for line in metrics.splitlines() if line.startswith('rerank_gateway_upstream_tokens_total{provider="deepinfra"}')]
    assert tokens and float(tokens[0].rsplit(" ", 1)[1]) > 0
    assert 'rerank_gateway_upstream_errors_total{provider="fireworks",reason="budget"} 1.0' in metrics


# --- the board's rules, without I/O ------------------------------------------------------------------

def outcome(passed: bool) -> CanaryOutcome:
    lines = builtin_canary()[:2]
    scores = tuple(tuple((0.9 if passed else 0.1) if i < len(line.relevant) else 0.5 for i in range(len(line.documents)))
                   for line in lines)
    return CanaryOutcome(lines, scores, judge(lines, scores), Usage())


def test_the_reference_is_the_first_passing_provider_else_the_first_not_known_to_fail() -> None:
    board = QualityBoard()
    fallback = ["a", "b", "c"]
    assert board.reference("m", fallback, lambda p: p != "a") == "b"  # a cannot be called
    board.record_verdict("m", "b", outcome(False))
    assert board.reference("m", fallback, lambda p: True) == "a"  # a unknown, b failing
    board.record_verdict("m", "c", outcome(True))
    assert board.reference("m", fallback, lambda p: True) == "c"  # the first that passes wins


def test_only_a_measured_agreement_within_tolerance_shares() -> None:
    board = QualityBoard()
    assert board.note_reference("m", "a") and not board.note_reference("m", "a")
    assert board.shares_with_reference("m", "a", "a", 0.05)
    assert not board.shares_with_reference("m", "b", "a", 0.05)  # unknown
    board.entry("m", "b").agreement.add([0.5] * 10, [0.52] * 10)
    assert board.shares_with_reference("m", "b", "a", 0.05)
    board.record_verdict("m", "b", outcome(False))
    assert not board.shares_with_reference("m", "b", "a", 0.05)  # failing its canary never shares
    assert board.entry("m", "b").agreement.current() is not None
    board.note_reference("m", "c")  # another reference: measured against the old one, forgotten
    assert board.entry("m", "b").agreement.current() is None


def test_a_changed_provider_config_forgets_its_verdict() -> None:
    board = QualityBoard()
    board.entry("m", "a", fingerprint=("url-1",))
    board.record_verdict("m", "a", outcome(False))
    assert board.entry("m", "a", fingerprint=("url-1",)).state == "failing"
    assert board.entry("m", "a", fingerprint=("url-2",)).state == "unknown"


def test_warnings_only_when_failing_starts_or_ends() -> None:
    board = QualityBoard()
    assert board.record_verdict("m", "a", outcome(True)) is None  # a first pass is no news
    started = board.record_verdict("m", "a", outcome(False))
    assert started is not None and started.state == "failing"
    assert board.record_verdict("m", "a", outcome(False)) is None
    recovered = board.record_verdict("m", "a", outcome(True))
    assert recovered is not None and recovered.state == "passing"


async def test_shutdown_cancels_shadow_calls_in_flight(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "fireworks", "slow", delay_ms=4000)
    gateway = await make_gateway(edit=probing(shadow_rate=1.0, probe_interval_seconds=0))
    await rerank(gateway, OLD)

    async def shadow_call_upstream() -> bool:
        return (await emulator_requests(emulator)).get("fireworks", 0) > 0

    await eventually(shadow_call_upstream, what="the shadow call reaching fireworks")
    shadows = [t for t in asyncio.all_tasks() if "QualityGuard._shadow" in repr(t.get_coro())]
    assert len(shadows) == 1
    started = time.perf_counter()
    await gateway.close()
    assert time.perf_counter() - started < 2.0  # did not wait out the 4 s shadow call
    assert shadows[0].cancelled()


async def test_a_reload_probes_again(aiohttp_client, emulator, tmp_path, monkeypatch):
    from gateway.app import create_app
    from gateway.config import load_config
    from tests.support.processes import gateway_toml

    monkeypatch.setenv("ADMIN_KEY", "admin-secret")
    path = tmp_path / "config.toml"
    path.write_text(gateway_toml(emulator.server.port, server='admin_key_env = "ADMIN_KEY"\nreload_poll_seconds = 0',
                                 probe_interval_seconds=3600))
    gateway = await aiohttp_client(create_app(load_config(path), config_path=path))
    await probed(gateway)
    probes = (await emulator_requests(emulator))["deepinfra"]
    await add_fault(emulator, "deepinfra", "random")
    assert (await gateway.post("/admin/reload", headers={"Authorization": "Bearer admin-secret"})).status == 200
    deadline = time.monotonic() + 10
    while (await readiness(gateway))["quality"][MODEL]["deepinfra"]["state"] != "failing":
        assert time.monotonic() < deadline, "no probe after the reload"
        await asyncio.sleep(0.05)
    assert (await emulator_requests(emulator))["deepinfra"] == probes + 1
