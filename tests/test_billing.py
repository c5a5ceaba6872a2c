"""Every upstream call billed, every answered call kept: TEI's usage-less answers, split requests failing part-way."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from gateway.budget import GATEWAY_SCOPE, MemoryLedger, every_limit
from gateway.config import load_config, parse_config
from gateway.emulator import emulated_score
from gateway.emulator.wire import Call
from gateway.evaluation.beir import load_beir
from gateway.evaluation.run import EvalSettings, evaluate
from gateway.observability.logs import REQUEST_LOGGER
from tests.support.config import gateway_config, local_url, write_config
from tests.support.gateway import MODEL, GatewayFactory, add_fault, emulator_url
from tests.support.processes import REPO

ADMIN = {"Authorization": "Bearer admin-secret"}
QUERY = "what does bankruptcy through the MFC cost"
TEI_PRICE = 1.0  # $/M tokens: the figure


@pytest.fixture(autouse=True)
def _admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")


def passages(count: int, tag: str = "p") -> list[str]:
    """Passages of one length, so every batch of a split request bills the same tokens."""
    return [f"{tag} passage {i:05d} about the fees and costs of bankruptcy" for i in range(count)]


def billed(**providers: dict[str, Any]) -> Any:
    def edit(raw: dict[str, Any]) -> None:
        raw["server"]["admin_key_env"] = "ADMIN_KEY"
        for name, values in providers.items():
            raw["providers"][name].update(values)
    return edit


async def spend_of(gateway, provider: str) -> dict[str, Any]:
    return (await (await gateway.get("/admin/spend", headers=ADMIN)).json())["providers"][provider]["today"]


async def stats(emulator) -> dict[str, Any]:
    return await (await emulator.get("/_emulator/stats")).json()


async def rerank(gateway, documents: list[str], query: str = QUERY):
    return await gateway.post("/v1/rerank", json={"model": MODEL, "query": query, "documents": documents})


def tokens_of(query: str, documents: list[str]) -> int:
    """What the emulator bills one call of these pairs (DeepInfra and Fireworks report it)."""
    return Call([query] * len(documents), documents).tokens()


# --- every call billed ---------------------------------------------------------------------

async def test_a_tei_provider_is_billed_by_estimate_and_refused_at_its_limit(make_gateway: GatewayFactory, emulator):
    # Billed by the estimate reservations use: 4 characters a token, the query once per text.
    per_request = -(-sum(len(QUERY) + len(d) for d in passages(10, tag="r0")) // 4)
    limit = 5.5 * per_request * TEI_PRICE / 1e6  # five requests' worth
    gateway = await make_gateway(
        fallback=["tei"], edit=billed(tei={"price_per_million_tokens": TEI_PRICE, "budget": {"daily_usd": limit}})
    )
    served = 0
    for i in range(200):
        response = await rerank(gateway, passages(10, tag=f"r{i}"))
        if response.status != 200:
            break
        served += 1
    else:
        pytest.fail("a TEI provider's budget never refused: its calls are not billed")
    assert response.status == 429 and int(response.headers["Retry-After"]) > 0
    assert (await response.json())["error"]["type"] == "budget_exhausted"
    today = await spend_of(gateway, "tei")
    assert 0 < today["usd"] <= limit and today["tokens"] > 0
    assert served == 5 and today["tokens"] == served * per_request
    assert (await stats(emulator))["requests"]["tei"] == served  # the refused request called nothing


async def test_an_exhausted_tei_budget_moves_on_to_the_next_provider(make_gateway: GatewayFactory):
    gateway = await make_gateway(
        fallback=["tei", "deepinfra"],
        edit=billed(tei={"price_per_million_tokens": TEI_PRICE, "budget": {"daily_usd": 0.002}}),
    )
    providers = [(await rerank(gateway, passages(10, tag=f"r{i}"))).headers["X-Rerank-Provider"] for i in range(40)]
    assert providers[0] == "tei" and providers[-1] == "deepinfra"
    assert 0 < (await spend_of(gateway, "tei"))["usd"] <= 0.002


async def test_estimated_usage_shows_in_the_request_log_and_the_metrics(make_gateway: GatewayFactory, caplog):
    gateway = await make_gateway(fallback=["tei"], edit=billed(tei={"price_per_million_tokens": TEI_PRICE}))
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        assert (await rerank(gateway, passages(8))).status == 200
    line = next(r for r in caplog.records if r.getMessage() == "rerank")
    fields = line.vetted_fields
    assert fields["tokens"] > 0 and fields["estimated_tokens"] == fields["tokens"]
    assert fields["cost_usd"] == pytest.approx(fields["tokens"] * TEI_PRICE / 1e6)
    assert fields["estimated_cost_usd"] == fields["cost_usd"]
    metrics = await (await gateway.get("/metrics")).text()
    estimated = f'rerank_gateway_upstream_estimated_tokens_total{{provider="tei"}} {float(fields["tokens"])}'
    assert estimated in metrics
    assert f'rerank_gateway_upstream_tokens_total{{provider="tei"}} {float(fields["tokens"])}' in metrics


async def test_reported_usage_is_not_marked_estimated(make_gateway: GatewayFactory, caplog):
    gateway = await make_gateway(fallback=["fireworks"])
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        assert (await rerank(gateway, passages(8))).status == 200
    fields = next(r for r in caplog.records if r.getMessage() == "rerank").vetted_fields
    assert fields["tokens"] == tokens_of(QUERY, passages(8)) and fields["estimated_tokens"] == 0
    assert fields["estimated_cost_usd"] == 0


async def test_tei_is_billed_at_the_ratio_learned_from_providers_that_report(make_gateway: GatewayFactory, emulator):
    """A provider that never reports usage is billed by the chars-per-token the others' reports teach."""
    gateway = await make_gateway(
        fallback=["fireworks", "tei"], edit=billed(tei={"price_per_million_tokens": TEI_PRICE}),
        resilience={"max_retries": 0},
    )
    # One-character passages: the emulator bills a token a pair at least, so 2 characters a token.
    tiny = {"model": MODEL, "query": "q", "documents": [chr(ord("a") + d) for d in range(20)]}
    for _ in range(30):
        response = await gateway.post("/v1/rerank", json=tiny, headers={"Cache-Control": "no-store"})
        assert response.status == 200
    report = await (await gateway.get("/admin/spend", headers=ADMIN)).json()
    assert report["providers"]["fireworks"]["chars_per_token"] < 3.0
    await add_fault(emulator, "fireworks", "status", status=500, count=1)
    documents = [chr(ord("A") + d) for d in range(26)]
    response = await rerank(gateway, documents, query="q")
    assert response.headers["X-Rerank-Provider"] == "tei"
    chars = sum(len("q") + len(d) for d in documents)
    # More than the 4-characters-a-token guess would bill: the learned ratio is nearer the truth.
    assert (await spend_of(gateway, "tei"))["tokens"] > chars / 4 * 1.2


async def test_eval_calls_are_billed_in_the_ledger_and_refused_by_its_budget(emulator):
    raw = gateway_config(emulator_url(emulator), ["deepinfra", "tei"])
    raw["providers"]["tei"]["price_per_million_tokens"] = TEI_PRICE
    config = parse_config(raw)
    ledger = MemoryLedger()
    report = await evaluate(config, MODEL, load_beir(REPO / "examples" / "eval"), EvalSettings(), ledger=ledger)
    assert report["providers"]["tei"]["usd_per_1k_queries"] > 0
    spend = {r.scope: r for r in await ledger.report(every_limit(config)) if r.period == "day"}
    assert spend["tei"].spent_usd > 0 and spend["deepinfra"].spent_usd > 0
    assert spend[GATEWAY_SCOPE].spent_usd == pytest.approx(spend["tei"].spent_usd + spend["deepinfra"].spent_usd)

    raw["providers"]["tei"]["budget"] = {"daily_usd": spend["tei"].spent_usd / 3}  # a third of a run
    refused = await evaluate(parse_config(raw), MODEL, load_beir(REPO / "examples" / "eval"), EvalSettings(),
                             ledger=MemoryLedger())
    assert "tei daily budget" in refused["providers"]["tei"]["error"]


def test_an_implausible_price_is_a_warning_naming_the_unit(tmp_path, caplog):
    path = tmp_path / "config.toml"
    write_config(path, gateway_config(local_url(9), providers={"fireworks": {"price_per_million_tokens": 2500}}))
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        config = load_config(path)  # a warning, not a refusal
    assert config.providers["fireworks"].price_per_million_tokens == 2500
    warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.config"]
    assert len(warnings) == 1
    assert "providers.fireworks.price_per_million_tokens = 2500 is read as US dollars per million tokens" in warnings[0]
    caplog.clear()
    write_config(path, gateway_config(local_url(9)))
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        load_config(path)
    assert not [r for r in caplog.records if r.name == "gateway.config"]


@pytest.mark.processes
@pytest.mark.slow
def test_check_config_shows_the_price_warning(tmp_path):
    path = tmp_path / "config.toml"
    write_config(path, gateway_config(local_url(9), providers={"deepinfra": {"price_per_million_tokens": 150}}))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(path)], cwd=REPO, capture_output=True,
        text=True, timeout=60, env={**os.environ, "EMULATOR_KEY": "k"},
    )
    assert result.returncode == 0  # still a valid config
    assert "providers.deepinfra.price_per_million_tokens = 150 is read as US dollars per million tokens" in result.stderr


# --- answered calls are kept -----------------------------------------------------------------

DEEPINFRA_PRICE = 0.05  # $/M, as tests.support.gateway configures it (and the emulator bills)
FIREWORKS_PRICE = 0.10
PASSAGES = passages(100)
BATCH = 10


def split(raw: dict[str, Any], retries: int = 0) -> None:
    """DeepInfra splits a request into calls of 10 pairs; no retries, so a failed call moves on."""
    raw["server"]["admin_key_env"] = "ADMIN_KEY"
    raw["providers"]["deepinfra"]["max_batch"] = BATCH
    raw["resilience"] = {**raw.get("resilience", {}), "max_retries": retries}


def per_batch() -> int:
    return tokens_of(QUERY, PASSAGES[:BATCH])


async def test_a_split_request_failing_part_way_settles_and_caches_the_answered_calls(
        make_gateway: GatewayFactory, emulator):
    """The issue's case, smaller: 10 calls, one fails. Before: all ten thrown away, the reservation
    released, the next provider scoring all 100, and a repeat paying for all 100 again."""
    gateway = await make_gateway(edit=split)
    await add_fault(emulator, "deepinfra", "status", status=500, count=1)
    response = await rerank(gateway, PASSAGES)
    assert response.status == 200
    # Fireworks is not known to agree with DeepInfra (no probes): it scores the whole request.
    assert response.headers["X-Rerank-Provider"] == "fireworks"
    deepinfra = await spend_of(gateway, "deepinfra")
    assert deepinfra["tokens"] == 9 * per_batch()
    assert deepinfra["usd"] == pytest.approx(9 * per_batch() * DEEPINFRA_PRICE / 1e6, rel=1e-6)
    assert deepinfra["reserved_usd"] == 0
    counts = await stats(emulator)
    assert counts["requests"]["deepinfra"] == 10 and counts["documents"]["deepinfra"] == 90

    again = await rerank(gateway, PASSAGES)
    assert again.status == 200 and again.headers["X-Rerank-Provider"] == "deepinfra"
    assert again.headers["X-Rerank-Cache"] == "hits=90; misses=10"  # the 9 answered calls were cached
    counts = await stats(emulator)
    assert counts["documents"]["deepinfra"] == 100  # only the failed call's 10 pairs were paid again
    assert (await spend_of(gateway, "deepinfra"))["tokens"] == 10 * per_batch()


async def test_the_next_provider_of_the_same_group_gets_only_the_failed_calls_pairs(
        make_gateway: GatewayFactory, emulator):
    def probed_split(raw: dict[str, Any]) -> None:
        split(raw)
        raw["models"][MODEL]["quality"] = {"probe_interval_seconds": 3600}  # probes at start: agreement

    gateway = await make_gateway(edit=probed_split)
    await wait_until_shared(gateway, "fireworks")
    before = (await stats(emulator))["documents"]
    await add_fault(emulator, "deepinfra", "status", status=500, count=1)
    response = await rerank(gateway, PASSAGES)
    assert response.status == 200 and response.headers["X-Rerank-Cache"] == "hits=0; misses=100"
    after = (await stats(emulator))["documents"]
    assert after["deepinfra"] - before["deepinfra"] == 90
    assert after["fireworks"] - before["fireworks"] == BATCH  # not 100: the answered 90 were kept
    scores = [item["relevance_score"] for item in sorted((await response.json())["results"], key=lambda r: r["index"])]
    again = await rerank(gateway, PASSAGES)
    assert again.headers["X-Rerank-Cache"] == "hits=100; misses=0"
    assert [r["relevance_score"] for r in sorted((await again.json())["results"], key=lambda r: r["index"])] == scores


async def test_a_retry_sends_only_the_pairs_no_call_answered(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(fallback=["deepinfra"], edit=lambda raw: split(raw, retries=1))
    await add_fault(emulator, "deepinfra", "status", status=503, count=1)
    response = await rerank(gateway, PASSAGES)
    assert response.status == 200 and response.headers["X-Rerank-Provider"] == "deepinfra"
    counts = await stats(emulator)
    assert counts["requests"]["deepinfra"] == 11 and counts["documents"]["deepinfra"] == 100
    assert (await spend_of(gateway, "deepinfra"))["tokens"] == 10 * per_batch()


async def test_a_call_cut_by_its_timeout_keeps_its_answered_siblings(make_gateway: GatewayFactory, emulator):
    def slow_split(raw: dict[str, Any]) -> None:
        split(raw)
        raw["providers"]["deepinfra"]["timeout_seconds"] = 1

    gateway = await make_gateway(edit=slow_split)
    await add_fault(emulator, "deepinfra", "hang", count=1)
    response = await rerank(gateway, PASSAGES)
    assert response.status == 200 and response.headers["X-Rerank-Provider"] == "fireworks"
    assert (await spend_of(gateway, "deepinfra"))["tokens"] == 9 * per_batch()
    again = await rerank(gateway, PASSAGES)
    assert again.headers["X-Rerank-Cache"] == "hits=90; misses=10"


async def test_when_every_provider_fails_the_answered_calls_are_still_kept(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(fallback=["deepinfra"], edit=split)
    await add_fault(emulator, "deepinfra", "status", status=500, count=1)
    failed = await rerank(gateway, PASSAGES)
    assert failed.status == 502
    assert (await spend_of(gateway, "deepinfra"))["tokens"] == 9 * per_batch()
    again = await rerank(gateway, PASSAGES)
    assert again.status == 200 and again.headers["X-Rerank-Cache"] == "hits=90; misses=10"


async def wait_until_shared(gateway, provider: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        quality = (await (await gateway.get("/readyz")).json())["quality"][MODEL]
        if quality[provider]["shares_cache"]:
            return
        assert time.monotonic() < deadline, f"{provider} never found to agree: {quality}"
        await asyncio.sleep(0.05)


async def test_the_unanswered_rest_is_carried_down_a_chain_of_agreeing_providers(make_gateway: GatewayFactory, emulator):
    """DeepInfra answers 90 of 100, Fireworks 5 of the 10 left, Cohere the last 5: one answer, nothing paid twice."""
    def three_agreeing(raw: dict[str, Any]) -> None:
        split(raw)
        raw["models"][MODEL]["fallback"] = ["deepinfra", "fireworks", "cohere"]
        raw["models"][MODEL]["quality"] = {"probe_interval_seconds": 3600}
        raw["providers"]["fireworks"]["max_batch"] = 5

    gateway = await make_gateway(edit=three_agreeing)
    await wait_until_shared(gateway, "fireworks")
    await wait_until_shared(gateway, "cohere")
    before = (await stats(emulator))["documents"]
    await add_fault(emulator, "deepinfra", "status", status=500, count=1)
    await add_fault(emulator, "fireworks", "status", status=500, count=1)
    response = await rerank(gateway, PASSAGES)
    assert response.status == 200 and response.headers["X-Rerank-Provider"] == "cohere"
    after = (await stats(emulator))["documents"]
    assert {p: after[p] - before[p] for p in ("deepinfra", "fireworks", "cohere")} == {
        "deepinfra": 90, "fireworks": 5, "cohere": 5}
    scores = {r["index"]: r["relevance_score"] for r in (await response.json())["results"]}
    assert [scores[i] for i in range(100)] == pytest.approx([emulated_score(QUERY, d) for d in PASSAGES], abs=1e-12)
    again = await rerank(gateway, PASSAGES)
    assert again.headers["X-Rerank-Cache"] == "hits=100; misses=0"


async def test_a_half_cached_request_is_carried_by_slot_from_a_failed_split_to_the_next_provider(
        make_gateway: GatewayFactory, emulator):
    """The even passages are cached first, so the missing pairs are the odd slots of the request:
    DeepInfra answers 40 of those 50 in calls of 10 (one fails), Fireworks the 10 left, in calls of
    5. Every layer names a pair by its slot, so each score lands on its own passage."""
    def two_agreeing(raw: dict[str, Any]) -> None:
        split(raw)
        raw["models"][MODEL]["quality"] = {"probe_interval_seconds": 3600}
        raw["providers"]["fireworks"]["max_batch"] = 5

    gateway = await make_gateway(edit=two_agreeing)
    await wait_until_shared(gateway, "fireworks")
    assert (await rerank(gateway, PASSAGES[::2])).status == 200
    before = (await stats(emulator))["documents"]
    await add_fault(emulator, "deepinfra", "status", status=500, count=1)
    response = await rerank(gateway, PASSAGES)
    assert response.status == 200 and response.headers["X-Rerank-Provider"] == "fireworks"
    assert response.headers["X-Rerank-Cache"] == "hits=50; misses=50"
    after = (await stats(emulator))["documents"]
    assert {p: after[p] - before[p] for p in ("deepinfra", "fireworks")} == {"deepinfra": 40, "fireworks": 10}
    scores = {r["index"]: r["relevance_score"] for r in (await response.json())["results"]}
    assert [scores[i] for i in range(100)] == pytest.approx([emulated_score(QUERY, d) for d in PASSAGES], abs=1e-12)
    again = await rerank(gateway, PASSAGES)
    assert again.headers["X-Rerank-Cache"] == "hits=100; misses=0"


async def test_a_hedge_that_lost_keeps_what_its_calls_answered(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(edit=split, resilience={"hedge": 500})
    await add_fault(emulator, "deepinfra", "slow", delay_ms=5000, count=1)  # one call of ten lags
    response = await rerank(gateway, PASSAGES)
    assert response.status == 200 and response.headers["X-Rerank-Provider"] == "fireworks"  # the hedge won
    # DeepInfra's lagging call was cancelled; the calls that had answered (all nine, unless this
    # machine stalled for the hedge's 500 ms) are paid for and cached: the two figures agree.
    tokens = (await spend_of(gateway, "deepinfra"))["tokens"]
    kept = tokens // per_batch()
    assert tokens == kept * per_batch() and 1 <= kept <= 9
    again = await rerank(gateway, PASSAGES)
    assert again.headers["X-Rerank-Cache"] == f"hits={kept * BATCH}; misses={100 - kept * BATCH}"
