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

from gateway.cache import pair_keys
from gateway.emulator import emulated_score, misbehaving_score
from gateway.emulator.app import EMULATOR_STATE
from gateway.models import Usage
from gateway.observability.logs import REQUEST_LOGGER
from gateway.quality import builtin_canary
from gateway.quality.board import QualityBoard
from gateway.quality.judge import judge
from gateway.quality.probe import CanaryOutcome
from gateway.web.edge import LIVE
from tests.support.canaries import word_overlap_canary
from tests.support.config import changed, gateway_config, write_config
from tests.support.gateway import MODEL, GatewayFactory, add_fault, emulator_requests, emulator_url
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


async def test_a_mis_served_provider_is_passed_over_while_one_that_passes_answers(
    make_gateway: GatewayFactory, emulator, caplog
):
    await add_fault(emulator, "deepinfra", "template")
    with caplog.at_level(logging.WARNING, logger="gateway.quality"):
        gateway = await make_gateway(edit=probing())
        quality = await probed(gateway)
    assert quality["deepinfra"]["state"] == "failing" and "margin" in quality["deepinfra"]["reason"]
    assert quality["deepinfra"]["serves"] and "64 of 72 canary pairs in order" in quality["deepinfra"]["standing"]
    assert quality["fireworks"] == {**quality["fireworks"], "state": "passing", "reference": True}
    ready = await gateway.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["problems"] == []
    assert any(w.startswith("model qwen3-reranker-8b: provider deepinfra fails its canary and serves, flagged")
               for w in body["warnings"])
    warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.quality"]
    assert len(warnings) == 1 and warnings[0].startswith("provider deepinfra of model qwen3-reranker-8b fails its canary")
    page = await (await gateway.get("/status?refresh=0")).text()
    assert "last change: deepinfra of qwen3-reranker-8b fails its canary" in page

    response, scores = await rerank(gateway, OLD)
    assert response.headers["X-Rerank-Provider"] == "fireworks" and "X-Rerank-Quality" not in response.headers
    assert scores == pytest.approx([emulated_score(QUERY, d) for d in OLD], abs=1e-12)
    assert (await emulator_requests(emulator)).get("deepinfra", 0) == 1  # the probe, nothing since

    metrics = await (await gateway.get("/metrics")).text()
    assert 'rerank_gateway_provider_quality{model="qwen3-reranker-8b",provider="deepinfra"} 0.0' in metrics
    assert 'rerank_gateway_provider_quality{model="qwen3-reranker-8b",provider="fireworks"} 1.0' in metrics
    page = await (await gateway.get("/status")).text()
    assert "canary failing · serves, flagged, when nothing better can" in page and "canary passing" in page


async def test_the_only_provider_failing_its_canary_still_answers_flagged(make_gateway: GatewayFactory, emulator, caplog):
    """The issue's outage: one provider, a few canary lines lost. Before the guard it served; it still does, flagged."""
    await add_fault(emulator, "deepinfra", "template")
    gateway = await make_gateway(fallback=["deepinfra"], edit=probing())
    quality = await probed(gateway, providers=("deepinfra",))
    assert quality["deepinfra"]["state"] == "failing" and quality["deepinfra"]["serves"]
    with caplog.at_level(logging.INFO, logger="gateway.requests"):
        response, scores = await rerank(gateway, OLD)
    assert response.headers["X-Rerank-Provider"] == "deepinfra" and response.headers["X-Rerank-Quality"] == "failing; language=en"
    assert scores == pytest.approx([misbehaving_score("template", QUERY, d) for d in OLD], abs=1e-12)
    logged = [r.vetted_fields for r in caplog.records if hasattr(r, "vetted_fields")]
    assert logged and logged[-1]["quality"] == "failing"

    cached, _ = await rerank(gateway, OLD)  # the failing provider's own cached scores: flagged as well
    assert cached.headers["X-Rerank-Provider"] == "cache" and cached.headers["X-Rerank-Quality"] == "failing; language=en"

    ready = await gateway.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["status"] == "ready" and body["models"][MODEL]["deepinfra"] == "usable"
    assert any("deepinfra fails its canary and serves" in w for w in body["warnings"])
    metrics = await (await gateway.get("/metrics")).text()
    assert 'rerank_gateway_quality_failing_answers_total{model="qwen3-reranker-8b",provider="deepinfra"} 2.0' in metrics
    # Per language: the template fault loses pairs in Russian and English, none in Chinese.
    for language, passing in (("ru", 0.0), ("en", 0.0), ("zh", 1.0)):
        assert (f'rerank_gateway_provider_language_quality{{language="{language}",model="qwen3-reranker-8b",'
                f'provider="deepinfra"}} {passing}') in metrics
    languages = (await readiness(gateway))["quality"][MODEL]["deepinfra"]["languages"]
    assert languages["zh"]["state"] == "passing" and languages["en"] == {**languages["en"], "state": "failing",
                                                                         "serves": True}


async def test_a_batch_mixing_languages_follows_the_models_plan_not_its_first_querys(
        make_gateway: GatewayFactory, emulator):
    """The template fault fails English and passes Chinese, so plans differ by language. A DeepInfra
    batch of an English and a Chinese query was planned as English (its first query), so its Chinese
    scores went where that language's plan put them; it follows the model's pooled plan now."""
    await add_fault(emulator, "deepinfra", "template")
    gateway = await make_gateway(fallback=["deepinfra"], edit=probing())
    await probed(gateway, providers=("deepinfra",))
    english = await gateway.post("/v1/inference/Qwen/Qwen3-Reranker-8B", json={"queries": [QUERY], "documents": OLD[:2]})
    assert english.headers["X-Rerank-Quality"] == "failing; language=en"
    mixed = await gateway.post("/v1/inference/Qwen/Qwen3-Reranker-8B",
                               json={"queries": [QUERY, "通过多功能中心办理破产要多少钱"], "documents": OLD[:2]})
    assert mixed.status == 200 and mixed.headers["X-Rerank-Quality"] == "failing"


async def test_a_failing_provider_answers_when_the_passing_one_cannot(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "fireworks", "template")
    gateway = await make_gateway(edit=probing(), resilience={"max_retries": 0})
    quality = await probed(gateway)
    assert quality["fireworks"]["state"] == "failing" and quality["deepinfra"]["state"] == "passing"
    await add_fault(emulator, "deepinfra", "status", status=500)
    response, scores = await rerank(gateway, OLD)
    assert response.headers["X-Rerank-Provider"] == "fireworks" and response.headers["X-Rerank-Quality"] == "failing; language=en"
    assert response.headers["X-Rerank-Cache"] == "hits=0; misses=10"  # its own group: never mixed
    assert scores == pytest.approx([misbehaving_score("template", QUERY, d) for d in OLD], abs=1e-12)


async def test_random_scores_are_still_refused_and_the_replica_stays_ready(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "random")
    gateway = await make_gateway(fallback=["deepinfra"], edit=probing())
    quality = await probed(gateway, providers=("deepinfra",))
    assert quality["deepinfra"]["state"] == "failing" and not quality["deepinfra"]["serves"]
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": OLD})
    assert response.status == 502 and (await response.json())["error"]["type"] == "all_providers_failed"
    assert "ranks like noise" in (await response.json())["error"]["message"]
    assert (await emulator_requests(emulator))["deepinfra"] == 1  # the probe alone
    ready = await gateway.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["problems"] == []
    assert "model qwen3-reranker-8b: no provider serves; those left fail their canary" in body["warnings"]
    assert "ranks like noise" in body["models"][MODEL]["deepinfra"]


async def test_the_lexical_last_resort_wins_over_a_provider_no_better_than_bm25(
    make_gateway: GatewayFactory, emulator, tmp_path
):
    """On a canary word overlap orders line by line (the built-in one is written so it cannot),
    a provider that fails it ranks worse than BM25, and the lexical last resort answers instead."""
    await add_fault(emulator, "deepinfra", "template")
    canary = str(word_overlap_canary(tmp_path))
    gateway = await make_gateway(fallback=["deepinfra"], edit=probing(canary=canary), resilience={"last_resort": "lexical"})
    quality = await probed(gateway, providers=("deepinfra",))
    assert not quality["deepinfra"]["serves"]
    response, _ = await rerank(gateway, OLD)
    assert response.headers["X-Rerank-Provider"] == "degraded-lexical" and "X-Rerank-Quality" not in response.headers


async def test_warn_only_reports_and_keeps_the_provider_apart(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "template")
    gateway = await make_gateway(edit=probing(action="warn"))
    quality = await probed(gateway)
    assert quality["deepinfra"]["state"] == "failing" and not quality["deepinfra"]["shares_cache"]
    response, scores = await rerank(gateway, OLD)
    assert response.headers["X-Rerank-Provider"] == "deepinfra"  # reported, not skipped
    assert response.headers["X-Rerank-Quality"] == "failing; language=en"
    assert scores == pytest.approx([misbehaving_score("template", QUERY, d) for d in OLD], abs=1e-12)


@pytest.mark.parametrize(("mode", "quality_settings"), [
    ("template", {}),
    ("rescale", {"min_rank_correlation": 1.0, "agreement_tolerance": 0.001}),  # calibration held to more than it gives
])
async def test_disagreeing_providers_are_never_mixed(
    make_gateway: GatewayFactory, emulator, mode, quality_settings, tmp_path
):
    """The issue's case: 10 passages cached from DeepInfra, DeepInfra down, 10 new ones: Fireworks
    (another template; or another scale no map brings close enough) scores all 20, so the answer
    is one provider's order. The canary spreads scores over the whole range (the built-in one's
    answers sit at both ends, where any monotone map fits), so the map's error is measurable."""
    await add_fault(emulator, "fireworks", mode)
    canary = str(word_overlap_canary(tmp_path))
    gateway = await make_gateway(edit=probing(action="warn", canary=canary, **quality_settings),
                                 resilience={"max_retries": 0, "breaker_consecutive_failures": 1})
    quality = await probed(gateway)
    assert not quality["fireworks"]["shares_cache"] and not quality["fireworks"]["calibrated"]
    if mode == "rescale":
        assert quality["fireworks"]["state"] == "passing" and quality["fireworks"]["mae"] > 0.05
        assert quality["fireworks"]["kendall_tau"] > 0.9  # the same order: only the scale differs
        assert quality["fireworks"]["calibration"]["mae_after"] > 0.001

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


def ranking(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=scores.__getitem__, reverse=True)


async def test_a_provider_on_another_scale_pays_only_missing_pairs_once_calibrated(
    make_gateway: GatewayFactory, emulator, caplog, tmp_path
):
    """One scale: Fireworks ranks like DeepInfra on another scale (`rescale` cubes every
    probability). Mapped onto DeepInfra's scale from the canary pairs, it shares DeepInfra's cache:
    a half-cached request pays only its missing pairs, and the answer's order and scale are
    DeepInfra's. Run with -s for the figures.

    The canary is one the emulator's word overlap passes whatever the built-in set asks of a model:
    what is shown here is the map, not the canary."""
    await add_fault(emulator, "fireworks", "rescale")
    gateway = await make_gateway(edit=probing(canary=str(word_overlap_canary(tmp_path))),
                                 resilience={"max_retries": 0, "breaker_consecutive_failures": 1})
    fireworks = (await probed(gateway))["fireworks"]
    calibration = fireworks["calibration"]
    assert fireworks["state"] == "passing" and fireworks["shares_cache"] and fireworks["calibrated"]
    assert calibration["mae_before"] > 0.05 >= calibration["mae_after"]  # 0.05: the agreement_tolerance
    await rerank(gateway, OLD)  # DeepInfra's scores of OLD, cached
    await add_fault(emulator, "deepinfra", "status", status=500)
    before = (await (await emulator.get("/_emulator/stats")).json())["documents"].get("fireworks", 0)

    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        response, scores = await rerank(gateway, OLD + NEW)
    paid = (await (await emulator.get("/_emulator/stats")).json())["documents"]["fireworks"] - before
    reference = [emulated_score(QUERY, d) for d in OLD + NEW]
    worst = max(abs(a - b) for a, b in zip(scores, reference))
    print(f"\ncalibrated on {calibration['pairs']} canary pairs: MAE {calibration['mae_before']:.4f} before, "
          f"{calibration['mae_after']:.4f} after (out of sample); half-cached request of {len(OLD + NEW)} pairs: "
          f"{paid} paid, {response.headers['X-Rerank-Cache']}; answer vs the reference: worst |difference| {worst:.4f}, "
          f"order {'the same' if ranking(scores) == ranking(reference) else 'DIFFERENT'}")
    assert response.headers["X-Rerank-Provider"] == "fireworks"
    assert response.headers["X-Rerank-Cache"] == "hits=10; misses=10" and paid == 10
    assert scores[:10] == pytest.approx(reference[:10], abs=1e-12)  # the cached ones, as DeepInfra gave them
    assert ranking(scores) == ranking(reference) and worst < 0.02  # the fresh ones on DeepInfra's scale
    logged = [r for r in caplog.records if r.name == REQUEST_LOGGER][-1].vetted_fields["raw_scores"]
    assert logged[:10] == [None] * 10  # the provider's own scores, in the request log
    assert logged[10:] == pytest.approx([misbehaving_score("rescale", QUERY, d) for d in NEW], abs=1e-12)

    metrics = await (await gateway.get("/metrics")).text()
    assert f'rerank_gateway_provider_agreement{{measure="mae_calibrated",model="{MODEL}",provider="fireworks"}}' in metrics
    assert "calibrated on" in await (await gateway.get("/status")).text()


async def test_without_a_verdict_the_fallback_provider_scores_whole_requests(make_gateway: GatewayFactory, emulator):
    """Probes off: agreement is never known, so Fireworks never mixes with DeepInfra's cache."""
    gateway = await make_gateway(resilience={"max_retries": 0})
    await rerank(gateway, OLD)
    await add_fault(emulator, "deepinfra", "status", status=500)
    response, _ = await rerank(gateway, OLD + NEW)
    assert response.headers["X-Rerank-Provider"] == "fireworks"
    assert response.headers["X-Rerank-Cache"] == "hits=0; misses=20"


async def test_a_provider_not_judged_yet_waits_behind_one_that_passes(make_gateway: GatewayFactory, emulator):
    """Issue 30, item 3: DeepInfra comes first in `fallback`, but its probe could not run (its one
    call failed: no verdict) while Fireworks passes: requests go to Fireworks, whose cache group
    is the reference's, not to a provider nobody has judged."""
    await add_fault(emulator, "deepinfra", "status", status=500, count=1)  # its canary probe's call
    gateway = await make_gateway(edit=probing(), resilience={"max_retries": 0})
    quality = await probed(gateway, providers=("fireworks",))
    assert quality["fireworks"]["state"] == "passing" and quality["fireworks"]["reference"]
    assert quality["deepinfra"]["state"] == "unknown" and "probe failed" in quality["deepinfra"]["reason"]
    response, _ = await rerank(gateway, OLD)
    assert response.headers["X-Rerank-Provider"] == "fireworks"
    assert (await emulator_requests(emulator)).get("deepinfra", 0) == 1  # the probe's call alone


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


async def test_a_probe_counts_every_http_call_it_makes_as_a_probe(make_gateway: GatewayFactory, emulator):
    """Fireworks takes one query per call: the built-in canary's 15 queries are 15 HTTP calls, not 1."""
    gateway = await make_gateway(fallback=["fireworks"], edit=probing())
    await probed(gateway, providers=("fireworks",))
    calls = (await emulator_requests(emulator))["fireworks"]
    assert calls == len(builtin_canary())
    metrics = await (await gateway.get("/metrics")).text()
    assert f'rerank_gateway_upstream_calls_total{{provider="fireworks",purpose="probe"}} {calls:.1f}' in metrics
    assert 'provider="fireworks",purpose="request"' not in metrics


# --- the board's rules, without I/O ------------------------------------------------------------------

def outcome(passed: bool, count: int = 2) -> CanaryOutcome:
    lines = builtin_canary()[:count]
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


def test_another_reference_measures_agreement_again() -> None:
    board = QualityBoard()
    assert board.note_reference("m", "a") and not board.note_reference("m", "a")
    board.entry("m", "b").agreement.add([0.5] * 10, [0.52] * 10)
    assert board.entry("m", "b").agreement.current() is not None
    board.note_reference("m", "c")  # another reference: measured against the old one, forgotten
    assert board.entry("m", "b").agreement.current() is None
    board.record_verdict("m", "b", outcome(True, count=6))
    board.record_verdict("m", "a", outcome(True, count=6))
    board.note_reference("m", "a")  # and measured again from the last canary scores, where both ran one
    measured = board.entry("m", "b").agreement.current()
    assert measured is not None and measured.mae == 0.0


def test_a_renamed_provider_keeps_its_entry() -> None:
    board = QualityBoard()
    board.entry("m", "a", fingerprint="identity-1")
    board.record_verdict("m", "a", outcome(False))
    assert board.entry("m", "renamed", fingerprint="identity-1").state == "failing"
    assert board.note_reference("m", "a") and not board.note_reference("m", "renamed")  # the same reference


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
    shadows = [t for t in asyncio.all_tasks() if "Shadower._shadow" in repr(t.get_coro())]
    assert len(shadows) == 1
    started = time.perf_counter()
    await gateway.close()
    assert time.perf_counter() - started < 2.0  # did not wait out the 4 s shadow call
    assert shadows[0].cancelled()


ADMIN = {"Authorization": "Bearer admin-secret"}
RELOADABLE = {"admin_key_env": "ADMIN_KEY", "reload_poll_seconds": 0}  # reloads by /admin/reload only
PROBED = {MODEL: {"quality": {"probe_interval_seconds": 3600}}}  # at start and after a reload only


async def test_a_reload_probes_only_the_providers_it_changed(aiohttp_client, emulator, tmp_path, monkeypatch):
    from gateway.app import create_app
    from gateway.config import load_config
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")
    raw = gateway_config(emulator_url(emulator), ["fireworks", "deepinfra"], server=RELOADABLE, models=PROBED)
    path = write_config(tmp_path / "config.toml", raw)
    gateway = await aiohttp_client(create_app(load_config(path), config_path=path))
    await probed(gateway)
    before = await emulator_requests(emulator)
    await add_fault(emulator, "deepinfra", "random")
    await add_fault(emulator, "fireworks", "random")

    # Nothing a verdict is about changed: a timeout, and the order. No probe, though both would fail now.
    write_config(path, changed(changed(raw, f"models.{MODEL}.fallback", ["deepinfra", "fireworks"]), "resilience.max_retries", 1))
    answer = await gateway.post("/admin/reload", headers=ADMIN)
    assert (await answer.json())["status"] == "reloaded"
    # Re-pointed at another model: DeepInfra is another provider as far as quality goes; Fireworks is not.
    write_config(path, changed(raw, "providers.deepinfra.model", "Qwen/Qwen3-Reranker-4B"))
    assert (await (await gateway.post("/admin/reload", headers=ADMIN)).json())["status"] == "reloaded"
    deadline = time.monotonic() + 10
    while (await readiness(gateway))["quality"][MODEL]["deepinfra"]["state"] != "failing":
        assert time.monotonic() < deadline, "no probe of the re-pointed provider after the reload"
        await asyncio.sleep(0.05)
    # Fireworks comes first in this order, so its turn in the round came before DeepInfra's probe.
    assert (await readiness(gateway))["quality"][MODEL]["fireworks"]["state"] == "passing"
    after = await emulator_requests(emulator)
    assert after["fireworks"] == before["fireworks"] and after["deepinfra"] == before["deepinfra"] + 1


async def test_a_reload_that_changes_the_pass_share_judges_the_same_scores_again(
    aiohttp_client, emulator, tmp_path, monkeypatch
):
    """No provider changed, so nothing is probed again; the stored canary scores meet the new rule."""
    from gateway.app import create_app
    from gateway.config import load_config
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")
    await add_fault(emulator, "deepinfra", "template")  # 20 of 24 pairs in ru and en, 24 of 24 in zh
    raw = gateway_config(emulator_url(emulator), server=RELOADABLE, models=PROBED)
    path = write_config(tmp_path / "config.toml", raw)
    gateway = await aiohttp_client(create_app(load_config(path), config_path=path))
    assert (await probed(gateway))["deepinfra"]["state"] == "failing"  # under 90% in ru and en
    before = await emulator_requests(emulator)
    write_config(path, changed(raw, f"models.{MODEL}.quality.canary_pass_share", 0.8))
    assert (await (await gateway.post("/admin/reload", headers=ADMIN)).json())["status"] == "reloaded"
    deepinfra = (await readiness(gateway))["quality"][MODEL]["deepinfra"]
    assert deepinfra["state"] == "passing" and deepinfra["canary"]["pass_share"] == 0.8
    assert await emulator_requests(emulator) == before


async def test_an_explicit_reload_after_the_watcher_reloaded_rebuilds_nothing(aiohttp_client, emulator, tmp_path, monkeypatch):
    from gateway.app import create_app
    from gateway.config import load_config
    from gateway.web.edge import LIVE
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")
    server = {**RELOADABLE, "reload_poll_seconds": 0.05}
    path = write_config(tmp_path / "config.toml", gateway_config(emulator_url(emulator), server=server))
    gateway = await aiohttp_client(create_app(load_config(path), config_path=path))
    live = gateway.app[LIVE]
    first = live.current
    write_config(path, gateway_config(emulator_url(emulator), ["fireworks"], server=server))
    deadline = time.monotonic() + 10
    while live.current is first:
        assert time.monotonic() < deadline, "the watcher never reloaded the edited file"
        await asyncio.sleep(0.02)
    watched = live.current
    answer = await gateway.post("/admin/reload", headers=ADMIN)  # `rerank-gateway reload` right after the edit
    assert answer.status == 200 and (await answer.json())["status"] == "unchanged"
    assert live.current is watched and watched.config.models[MODEL].fallback == ["fireworks"]


@pytest.mark.parametrize(("mode", "noise"), [("template", False), ("random", True), ("rescale", False)])
def test_standing_tells_a_noisy_ranker_from_noise(mode: str, noise: bool) -> None:
    from gateway.quality.standing import standing

    lines = builtin_canary()
    scores = [[misbehaving_score(mode, line.query, d) for d in line.documents] for line in lines]
    found = standing(lines, scores)
    assert found.pairs == 72 and found.like_noise is noise
    # The built-in set is written so word overlap fails it: BM25 orders fewer than half its pairs
    # (30 of 72; before it read Chinese as bigrams, each Chinese line tied and counted half: 34.5),
    # and even the random provider happens to do better on this seed.
    assert found.lexical_correct == 30.0 and not found.no_better_than_lexical


def test_standing_counts_ties_as_half_and_reversed_order_as_worse_than_chance() -> None:
    from gateway.quality.standing import standing

    lines = builtin_canary()[:4]
    flat = standing(lines, [[0.5] * len(line.documents) for line in lines])
    assert flat.correct == flat.pairs / 2 and flat.like_noise
    reversed_ = standing(lines, [[0.1] * len(line.relevant) + [0.9] * len(line.irrelevant) for line in lines])
    assert reversed_.correct == 0 and reversed_.chance_p > 0.99


def slow_upstream(emulator, seconds: float) -> None:
    """Every emulator call takes this long, the canary's too: requests come before the first verdict."""
    emulator.app[EMULATOR_STATE].config.latency_ms = seconds * 1000


async def cache_header(gateway, query: str, documents: list[str]) -> tuple[str, str]:
    response = await gateway.post("/v1/rerank", json={"query": query, "documents": documents})
    assert response.status == 200, await response.text()
    return response.headers["X-Rerank-Cache"], response.headers.get("X-Rerank-Quality", "")


async def test_scores_written_before_a_passing_verdict_are_read_after_it(make_gateway, emulator):
    """Before its first verdict a provider's scores go to a group marked `?`; the pass renames the
    group, and they were never read again: the start's repeats were paid twice."""
    slow_upstream(emulator, 0.5)
    gateway = await make_gateway(fallback=["deepinfra"], edit=probing())
    assert await cache_header(gateway, "before the verdict", OLD[:3]) == ("hits=0; misses=3", "")
    assert (await probed(gateway, providers=("deepinfra",)))["deepinfra"]["state"] == "passing"
    assert await cache_header(gateway, "before the verdict", OLD[:3]) == ("hits=3; misses=0", "")
    calls = (await emulator_requests(emulator))["deepinfra"]
    assert await cache_header(gateway, "before the verdict", OLD[:3]) == ("hits=3; misses=0", "")  # copied over
    assert (await emulator_requests(emulator))["deepinfra"] == calls


async def test_before_its_verdict_a_provider_reads_what_was_cached_under_its_pass(make_gateway, emulator):
    """A restart with a warm Redis, or a worker that has not yet learned of the pass another
    worker recorded: the pairs cached under the passing mark are read before this process's verdict."""
    slow_upstream(emulator, 1.0)
    gateway = await make_gateway(fallback=["deepinfra"], edit=probing())
    live = gateway.app[LIVE]
    pending = live.current.quality_guard.groups.group_of(MODEL, "deepinfra")
    assert pending.endswith("?")
    passed = pending.removesuffix("?")  # as the pass names it
    await live.shared.cache.put_many(pair_keys(passed, None, ["cached before"] * 3, OLD[:3]), [0.9, 0.5, 0.1])
    assert await cache_header(gateway, "cached before", OLD[:3]) == ("hits=3; misses=0", "")
    assert (await readiness(gateway))["quality"][MODEL]["deepinfra"]["state"] == "unknown"  # it was before the verdict


async def test_scores_written_before_a_failing_verdict_are_never_read(make_gateway, emulator):
    """Ranking at random from the start: what it scored before its verdict is dropped with it."""
    slow_upstream(emulator, 0.5)
    await add_fault(emulator, "deepinfra", "random")
    gateway = await make_gateway(fallback=["deepinfra"], edit=probing(action="warn"))
    # Planned before the verdict (the canary call takes as long): its scores went to the `?` group.
    assert (await cache_header(gateway, "before the verdict", OLD[:3]))[0] == "hits=0; misses=3"
    assert (await probed(gateway, providers=("deepinfra",)))["deepinfra"]["state"] == "failing"
    header, quality = await cache_header(gateway, "before the verdict", OLD[:3])
    assert header == "hits=0; misses=3" and quality.startswith("failing")
