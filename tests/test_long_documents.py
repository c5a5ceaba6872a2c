"""Long documents: held to the model's context (truncated, chunked into windows, or refused), per model and per request."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest

from gateway.observability.logs import REQUEST_LOGGER
from tests.support.cache_requests import DI
from tests.support.emulator_calls import PATHS, request_body
from tests.support.gateway import MODEL, GatewayFactory

CONTEXT = 32_768  # the emulator's, as Qwen3-Reranker-8B's hosts allow
QUERY = "what does out-of-court bankruptcy cost"
# No word of QUERY in it: a document of filler scores as unrelated until its end. Numbered, so
# that no two windows of it are the same text (which would be one pair).
FILLER = "".join(f"lorem{i} ipsum dolor sit amet " for i in range(20_000))
ANSWER = "Out-of-court bankruptcy through the MFC does not cost anything: what it costs is nothing."
WEAK = "Bankruptcy news from Kazan."  # one word of the query


def long_document(chars: int, ending: str = ANSWER) -> str:
    return FILLER[: chars - len(ending) - 1] + " " + ending


def chunked(**settings: Any) -> dict[str, Any]:
    return {"models": {MODEL: {"long_documents": "chunk", **settings}}}


def model_settings(**settings: Any) -> dict[str, Any]:
    return {"models": {MODEL: settings}}


async def stats(emulator) -> dict[str, Any]:
    return await (await emulator.get("/_emulator/stats")).json()


async def sent_documents(emulator, provider: str = "deepinfra") -> list[str]:
    body = (await stats(emulator))["last_body"][provider]
    return body["texts"] if provider == "tei" else body["documents"]


def log_line(caplog) -> dict[str, Any]:
    lines = [record for record in caplog.records if record.getMessage() == "rerank"]
    return lines[-1].vetted_fields


@pytest.mark.parametrize("provider", ["deepinfra", "fireworks", "cohere", "tei"])
async def test_the_emulator_refuses_a_pair_over_its_context_as_the_host_would(emulator, provider: str):
    too_long = "word " * (CONTEXT * 4 // 5 + 10)
    response = await emulator.post(PATHS[provider], json=request_body(provider, ["short one", too_long]),
                                   headers={"Authorization": "Bearer emulator-test-key"})
    assert response.status == (413 if provider == "tei" else 400)
    body = await response.json()
    message = {"deepinfra": lambda: body["detail"]["error"], "fireworks": lambda: body["error"],
               "cohere": lambda: body["message"], "tei": lambda: body["error"]}[provider]()
    assert "pair 1 has" in message and "over the model's context of 32768 tokens" in message


async def test_tei_with_truncate_is_cut_by_the_emulator_not_refused(emulator):
    too_long = "word " * (CONTEXT * 4 // 5 + 10)
    response = await emulator.post(PATHS["tei"], json=request_body("tei", ["short one", too_long], truncate=True),
                                   headers={"Authorization": "Bearer emulator-test-key"})
    assert response.status == 200
    assert len(await response.json()) == 2


async def test_a_200k_character_document_among_five_is_answered_and_nothing_past_the_context_goes_out(
    make_gateway: GatewayFactory, emulator,
):
    gateway = await make_gateway(fallback=["deepinfra"])
    documents = ["short one", WEAK, long_document(200_000), "another short one", ANSWER]
    response = await gateway.post(DI, json={"queries": [QUERY], "documents": documents})
    assert response.status == 200, await response.text()
    assert len((await response.json())["scores"]) == 5
    sent = await sent_documents(emulator)
    assert (await stats(emulator))["requests"]["deepinfra"] == 1  # not refused, not retried
    assert all((len(QUERY) + len(text)) // 4 <= CONTEXT for text in sent)
    assert documents[2].startswith(sent[2]) and len(sent[2]) < len(documents[2])
    assert sent[2].endswith(" ")  # cut between words
    assert [sent[i] for i in (0, 1, 3, 4)] == [documents[i] for i in (0, 1, 3, 4)]


async def test_chunk_finds_an_answer_at_the_end_that_truncate_cuts_off(make_gateway: GatewayFactory, emulator, caplog):
    documents = [WEAK, long_document(200_000)]
    truncating = await make_gateway(fallback=["deepinfra"])
    scores = (await (await truncating.post(DI, json={"queries": [QUERY], "documents": documents})).json())["scores"]
    assert scores[1] < scores[0]
    chunking = await make_gateway(fallback=["deepinfra"], **chunked())
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        response = await chunking.post(DI, json={"queries": [QUERY], "documents": documents})
        scores = (await response.json())["scores"]
    assert scores[1] > scores[0]
    sent = await sent_documents(emulator)
    windows = len(sent) - 1
    assert windows >= 3 and sent[-1].endswith(ANSWER)
    assert all((len(QUERY) + len(text)) // 4 <= CONTEXT for text in sent)
    assert response.headers["X-Rerank-Cache"] == f"hits=0; misses={1 + windows}"
    logged = log_line(caplog)["long_documents"]
    assert logged["chunked"] == 1 and logged["windows"] == logged["windows_sent"] == windows
    assert logged["truncated"] == 0
    assert logged["best_windows"] == {"1": windows - 1}  # the last window, where the answer is


async def test_the_same_chunked_request_again_is_all_hits(make_gateway: GatewayFactory, emulator, caplog):
    gateway = await make_gateway(fallback=["deepinfra"], **chunked(chunk_tokens=4096, chunk_overlap_tokens=256))
    body = {"queries": [QUERY], "documents": [WEAK, long_document(120_000), "short"]}
    first = await gateway.post(DI, json=body)
    calls = (await stats(emulator))["requests"]["deepinfra"]
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        again = await gateway.post(DI, json=body)
    logged = log_line(caplog)["long_documents"]
    assert logged["windows"] > 1 and logged["windows_sent"] == 0
    assert (await again.json())["scores"] == (await first.json())["scores"]
    windows = len(await sent_documents(emulator)) - 2
    assert windows >= 120_000 // (4096 * 3)
    assert again.headers["X-Rerank-Cache"] == f"hits={windows + 2}; misses=0"
    assert (await stats(emulator))["requests"]["deepinfra"] == calls


async def test_windows_overlap_and_cover_the_whole_document(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(fallback=["deepinfra"], **chunked(max_tokens_per_document=2000, chunk_tokens=1000,
                                                                  chunk_overlap_tokens=100))
    document = " ".join(f"w{i}" for i in range(5_000))
    assert (await gateway.post(DI, json={"queries": [QUERY], "documents": [document]})).status == 200
    sent = await sent_documents(emulator)
    assert len(sent) > 1 and all(len(window) <= 3000 for window in sent)
    words = [window.split() for window in sent]
    for before, after in itertools.pairwise(words):
        assert after[0] in before and before.index(after[0]) > 0  # each starts inside the one before, at a word
    assert {word for window in words for word in window} == set(document.split())


async def test_refuse_is_a_413_naming_the_limit(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(fallback=["deepinfra"], **model_settings(long_documents="refuse",
                                                                         max_tokens_per_document=1000))
    response = await gateway.post(DI, json={"queries": [QUERY], "documents": ["short", "x " * 2000]})
    assert response.status == 413
    message = (await response.json())["error"]["message"]
    assert "documents[1]" in message and "1000 tokens per document" in message and "long_documents" in message
    assert (await stats(emulator))["requests"]["deepinfra"] == 0


async def test_a_configured_max_tokens_per_document_holds(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(fallback=["deepinfra"], **model_settings(max_tokens_per_document=100,
                                                                         chars_per_token=4.0))
    assert (await gateway.post(DI, json={"queries": [QUERY], "documents": ["word " * 1000]})).status == 200
    (sent,) = await sent_documents(emulator)
    assert 300 < len(sent) <= 400


async def test_cohere_max_tokens_per_doc_holds_and_is_part_of_the_pair(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(fallback=["deepinfra"], **chunked())
    document = long_document(14_024)
    body = {"model": MODEL, "query": QUERY, "documents": [document, WEAK], "max_tokens_per_doc": 64}
    response = await gateway.post("/v2/rerank", json=body)
    assert response.status == 200, await response.text()
    sent = await sent_documents(emulator)
    assert len(sent) == 2 and len(sent[0]) <= 64 * 3 and document.startswith(sent[0])  # truncated, as Cohere does
    wider = await gateway.post("/v2/rerank", json={**body, "max_tokens_per_doc": 128})
    assert wider.headers["X-Rerank-Cache"] == "hits=1; misses=1"  # the text cut at 128 is another pair
    assert 64 * 3 < len((await sent_documents(emulator))[0]) <= 128 * 3
    bad = await gateway.post("/v2/rerank", json={**body, "max_tokens_per_doc": 0})
    assert bad.status == 422 and "max_tokens_per_doc" in (await bad.json())["error"]["message"]


async def test_tei_truncate_and_its_direction_are_honoured(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(fallback=["deepinfra"], **chunked(max_tokens_per_document=50))
    document = " ".join(f"w{i}" for i in range(500))
    refused = await gateway.post("/rerank", json={"query": QUERY, "texts": [document], "truncate": False})
    assert refused.status == 413 and "50 tokens per document" in (await refused.json())["error"]["message"]
    kept_start = await gateway.post("/rerank", json={"query": QUERY, "texts": [document], "truncate": True})
    assert kept_start.status == 200
    (sent,) = await sent_documents(emulator)
    assert document.startswith(sent) and len(sent) <= 150
    left = {"query": QUERY, "texts": [document], "truncate": True, "truncation_direction": "Left"}
    assert (await gateway.post("/rerank", json=left)).status == 200
    (sent,) = await sent_documents(emulator)
    assert document.endswith(sent) and sent.startswith("w") and len(sent) <= 150
    bad = await gateway.post("/rerank", json={**left, "truncation_direction": "middle"})
    assert bad.status == 422 and "truncation_direction" in (await bad.json())["error"]["message"]
    unsaid = await gateway.post("/rerank", json={"query": QUERY, "texts": [document]})
    assert unsaid.status == 200 and len(await sent_documents(emulator)) > 1  # the model's own: chunk


async def test_a_query_leaving_no_room_is_refused_clearly(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(fallback=["deepinfra"], **model_settings(context_tokens=200))
    response = await gateway.post(DI, json={"queries": ["q " * 300], "documents": ["short"]})
    assert response.status == 413
    assert "context_tokens = 200" in (await response.json())["error"]["message"]


async def test_windows_are_billed_and_budgeted_as_the_pairs_they_are(make_gateway: GatewayFactory, emulator, caplog):
    documents = [WEAK, long_document(200_000)]
    priced = {"providers": {"deepinfra": {"price_per_million_tokens": 1.0, "budget": {"daily_usd": 0.04}}}}
    truncating = await make_gateway(fallback=["deepinfra"], **priced)
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        assert (await truncating.post(DI, json={"queries": [QUERY], "documents": documents})).status == 200
        # Chunked, the same request sends twice the text: its reservation counts every window, and is over.
        chunking = await make_gateway(fallback=["deepinfra"], **priced, **chunked())
        refused = await chunking.post(DI, json={"queries": [QUERY], "documents": documents})
        assert refused.status == 429 and "budget" in (await refused.text())
        unbudgeted = await make_gateway(fallback=["deepinfra"], **chunked())
        await emulator.post("/_emulator/reset")
        assert (await unbudgeted.post(DI, json={"queries": [QUERY], "documents": documents})).status == 200
    line = log_line(caplog)
    assert line["tokens"] == (await stats(emulator))["tokens"]["deepinfra"]  # as the provider billed the windows
    assert line["long_documents"]["windows"] == len(await sent_documents(emulator)) - 1


def test_windows_that_would_not_move_on_are_a_config_error():
    from gateway.config import ConfigError, parse_config
    from tests.support.config import gateway_config, local_url

    raw = gateway_config(local_url(9), **chunked(chunk_tokens=256, chunk_overlap_tokens=256))
    with pytest.raises(ConfigError, match=r"chunk_overlap_tokens .* must be under chunk_tokens"):
        parse_config(raw)
