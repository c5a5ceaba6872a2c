"""The gateway end to end: real sockets to the gateway and from it to the provider emulator."""

from __future__ import annotations

import time
from typing import Any, get_args

import pytest
from aiohttp import web

from gateway.config import ProviderKind
from gateway.emulator import emulated_score
from tests.support.gateway import EMULATOR_KEY, MODEL, GatewayFactory, add_fault, emulator_requests

QUERY = "how much does bankruptcy through the MFC cost?"
DOCUMENTS = [
    "The MFC in Kazan opens at 8:00.",
    "Out-of-court bankruptcy through the MFC is free.",
    "Bankruptcy through a court costs about 25,000 rubles.",
    "Weather in Kazan is mild in May.",
    "How much does a passport cost?",
]
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def expected(documents: list[str] = DOCUMENTS, query: str = QUERY, instruction: str | None = None) -> list[float]:
    return [emulated_score(query, document, instruction) for document in documents]


# How each dialect asks, and how to read its answer back into scores by document index.
def scores_from_deepinfra(body: Any) -> dict[int, float]:
    return dict(enumerate(body["scores"]))


def scores_from_ranked(key: str, score_key: str = "relevance_score") -> Any:
    return lambda body: {item["index"]: item[score_key] for item in (body[key] if key else body)}


DIALECTS: dict[str, tuple[str, dict[str, Any], Any]] = {
    "deepinfra": (
        "/v1/inference/Qwen/Qwen3-Reranker-8B",
        {"queries": [QUERY], "documents": DOCUMENTS},
        scores_from_deepinfra,
    ),
    "deepinfra-passages": (
        "/v1/inference/Qwen/Qwen3-Reranker-8B",
        {"queries": [QUERY], "passages": DOCUMENTS},
        scores_from_deepinfra,
    ),
    "fireworks": (
        "/inference/v1/rerank",
        {"model": "accounts/fireworks/models/qwen3-reranker-8b", "query": QUERY, "documents": DOCUMENTS},
        scores_from_ranked("data"),
    ),
    "cohere-v1": ("/v1/rerank", {"query": QUERY, "documents": [{"text": d} for d in DOCUMENTS]}, scores_from_ranked("results")),
    "cohere-v2": ("/v2/rerank", {"model": MODEL, "query": QUERY, "documents": DOCUMENTS}, scores_from_ranked("results")),
    "cohere-root": ("/rerank", {"query": QUERY, "documents": DOCUMENTS}, scores_from_ranked("results")),
    "tei": ("/rerank", {"query": QUERY, "texts": DOCUMENTS}, scores_from_ranked("", "score")),
}
PROVIDER_KINDS = get_args(ProviderKind)  # the emulator serves every kind config.toml may name


@pytest.mark.parametrize("provider", PROVIDER_KINDS)
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_every_dialect_through_every_provider_kind(make_gateway: GatewayFactory, emulator, dialect, provider):
    gateway = await make_gateway(fallback=[provider])
    path, body, read_scores = DIALECTS[dialect]
    response = await gateway.post(path, json=body)
    assert response.status == 200, await response.text()
    assert response.headers["X-Rerank-Provider"] == provider
    assert response.headers["X-Rerank-Model"] == MODEL
    scores = read_scores(await response.json())
    assert scores == pytest.approx(dict(enumerate(expected())), abs=1e-12)
    assert (await emulator_requests(emulator))[provider] == 1


async def test_deepinfra_answer_shape(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    response = await gateway.post("/v1/inference/Qwen/Qwen3-Reranker-8B", json={"queries": [QUERY], "documents": DOCUMENTS},
                                  headers={"X-Request-ID": "kb-42"})
    body = await response.json()
    assert set(body) == {"scores", "input_tokens", "request_id", "inference_status"}
    assert body["request_id"] == "kb-42" == response.headers["X-Request-ID"]
    status = body["inference_status"]
    assert status["status"] == "succeeded"
    assert status["tokens_input"] == body["input_tokens"] > 0
    assert status["cost"] > 0


async def test_fireworks_answer_sorted_cut_with_documents(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    response = await gateway.post(
        "/inference/v1/rerank",
        json={"model": "accounts/fireworks/models/qwen3-reranker-8b", "query": QUERY, "documents": DOCUMENTS,
              "top_n": 2, "return_documents": True},
    )
    body = await response.json()
    want = sorted(range(len(DOCUMENTS)), key=lambda i: expected()[i], reverse=True)[:2]
    assert [item["index"] for item in body["data"]] == want
    assert [item["document"] for item in body["data"]] == [DOCUMENTS[i] for i in want]
    assert body["results"] == body["data"]
    assert body["object"] == "list" and body["model"] == "accounts/fireworks/models/qwen3-reranker-8b"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] > 0


async def test_cohere_answer_shape_and_top_n(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    response = await gateway.post("/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": 3, "return_documents": True})
    body = await response.json()
    assert set(body) == {"id", "results", "meta"}
    assert len(body["results"]) == 3
    scores = [item["relevance_score"] for item in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all(item["document"] == {"text": DOCUMENTS[item["index"]]} for item in body["results"])
    assert body["meta"]["billed_units"] == {"search_units": 1}
    assert body["meta"]["api_version"] == {"version": "2"}
    assert body["meta"]["tokens"]["input_tokens"] > 0


@pytest.mark.parametrize("path, key", [("/v1/rerank", "results"), ("/v2/rerank", "results"), ("/inference/v1/rerank", "data")])
async def test_whole_float_top_n_is_a_whole_number(make_gateway: GatewayFactory, path, key):
    # JSON Schema counts 2.0 as an integer, and some clients serialize every number as a float.
    gateway = await make_gateway()
    response = await gateway.post(path, json={"query": QUERY, "documents": DOCUMENTS, "top_n": 2.0})
    assert response.status == 200, await response.text()
    assert len((await response.json())[key]) == 2


async def test_cohere_object_documents_come_back_whole(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    documents = [{"text": text, "id": f"doc-{i}", "meta": {"page": i}} for i, text in enumerate(DOCUMENTS)]
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": documents, "return_documents": True})
    assert response.status == 200, await response.text()
    results = (await response.json())["results"]
    assert [item["document"] for item in results] == [documents[item["index"]] for item in results]
    assert {item["index"]: item["relevance_score"] for item in results} == pytest.approx(dict(enumerate(expected())))


async def test_cohere_rank_fields_choose_what_is_scored(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    documents = [{"title": f"title {i}", "text": "ignored text", "body": text} for i, text in enumerate(DOCUMENTS)]
    one_field = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": documents, "rank_fields": ["body"]})
    assert one_field.status == 200, await one_field.text()
    scores = {item["index"]: item["relevance_score"] for item in (await one_field.json())["results"]}
    assert scores == pytest.approx(dict(enumerate(expected())))  # one field: its bare value

    body = {"query": QUERY, "documents": documents, "rank_fields": ["title", "body"], "return_documents": True}
    two_fields = await (await gateway.post("/v1/rerank", json=body)).json()
    lines = [f"title: title {i}\nbody: {text}" for i, text in enumerate(DOCUMENTS)]
    assert {item["index"]: item["relevance_score"] for item in two_fields["results"]} == pytest.approx(dict(enumerate(expected(lines))))
    assert all(item["document"] == documents[item["index"]] for item in two_fields["results"])


async def test_tei_raw_scores_and_text(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    response = await gateway.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True, "return_text": True})
    body = await response.json()
    assert isinstance(body, list) and len(body) == len(DOCUMENTS)
    from gateway.emulator import emulated_logit

    for item in body:
        assert item["score"] == pytest.approx(emulated_logit(QUERY, DOCUMENTS[item["index"]]), abs=1e-6)
        assert item["text"] == DOCUMENTS[item["index"]]


@pytest.mark.parametrize("provider, field", [("deepinfra", "instruction"), ("fireworks", "task")])
async def test_instruction_is_carried_to_the_provider(make_gateway: GatewayFactory, emulator, provider, field):
    gateway = await make_gateway(fallback=[provider])
    response = await gateway.post(
        "/v1/inference/Qwen/Qwen3-Reranker-8B", json={"queries": [QUERY], "documents": DOCUMENTS, "instruction": INSTRUCTION}
    )
    assert response.status == 200
    assert (await response.json())["scores"] == pytest.approx(expected(instruction=INSTRUCTION), abs=1e-12)
    last_body = (await (await emulator.get("/_emulator/stats")).json())["last_body"][provider]
    assert last_body[field] == INSTRUCTION


async def test_fireworks_task_is_carried_to_deepinfra(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(fallback=["deepinfra"])
    response = await gateway.post("/inference/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "task": INSTRUCTION})
    scores = scores_from_ranked("data")(await response.json())
    assert scores == pytest.approx(dict(enumerate(expected(instruction=INSTRUCTION))), abs=1e-12)
    assert (await (await emulator.get("/_emulator/stats")).json())["last_body"]["deepinfra"]["instruction"] == INSTRUCTION


async def test_kinds_without_instructions_are_skipped(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(fallback=["cohere", "tei", "fireworks"])
    response = await gateway.post(
        "/v1/inference/Qwen/Qwen3-Reranker-8B", json={"queries": [QUERY], "documents": DOCUMENTS, "instruction": INSTRUCTION}
    )
    assert response.status == 200
    assert response.headers["X-Rerank-Provider"] == "fireworks"
    calls = await emulator_requests(emulator)
    assert calls["cohere"] == 0 and calls["tei"] == 0


@pytest.mark.parametrize("mode", ["shuffle", None])
async def test_scores_land_on_the_right_document_whatever_the_order(make_gateway: GatewayFactory, emulator, mode):
    if mode:
        for provider in ("fireworks", "cohere", "tei"):
            await add_fault(emulator, provider, mode)
    for provider in ("fireworks", "cohere", "tei"):
        gateway = await make_gateway(fallback=[provider])
        response = await gateway.post("/v1/inference/Qwen/Qwen3-Reranker-8B", json={"queries": [QUERY], "documents": DOCUMENTS})
        assert (await response.json())["scores"] == pytest.approx(expected(), abs=1e-12), provider


async def test_many_queries_are_grouped_for_one_query_providers(make_gateway: GatewayFactory, emulator):
    other = "where is the MFC in Kazan?"
    queries = [QUERY, other, QUERY, other, QUERY]
    gateway = await make_gateway(fallback=["fireworks"])
    response = await gateway.post("/v1/inference/Qwen/Qwen3-Reranker-8B", json={"queries": queries, "documents": DOCUMENTS})
    assert response.status == 200, await response.text()
    want = [emulated_score(q, d) for q, d in zip(queries, DOCUMENTS)]
    assert (await response.json())["scores"] == pytest.approx(want, abs=1e-12)
    assert (await emulator_requests(emulator))["fireworks"] == 2


async def test_deepinfra_takes_many_queries_in_one_call(make_gateway: GatewayFactory, emulator):
    queries = [f"{QUERY} {i}" for i in range(len(DOCUMENTS))]
    gateway = await make_gateway(fallback=["deepinfra"])
    response = await gateway.post("/v1/inference/Qwen/Qwen3-Reranker-8B", json={"queries": queries, "documents": DOCUMENTS})
    want = [emulated_score(q, d) for q, d in zip(queries, DOCUMENTS)]
    assert (await response.json())["scores"] == pytest.approx(want, abs=1e-12)
    assert (await emulator_requests(emulator))["deepinfra"] == 1


@pytest.mark.parametrize("provider, calls", [("deepinfra", 4), ("fireworks", 4), ("tei", 4)])
async def test_requests_over_max_batch_are_split(make_gateway: GatewayFactory, emulator, provider, calls):
    documents = [f"passage {i} about bankruptcy costs" for i in range(10)]

    def small_batches(raw: dict[str, Any]) -> None:
        raw["providers"][provider]["max_batch"] = 3

    gateway = await make_gateway(fallback=[provider], edit=small_batches)
    response = await gateway.post("/v1/inference/Qwen/Qwen3-Reranker-8B", json={"queries": [QUERY], "documents": documents})
    assert (await response.json())["scores"] == pytest.approx(expected(documents), abs=1e-12)
    stats = await (await emulator.get("/_emulator/stats")).json()
    assert stats["requests"][provider] == calls
    assert stats["documents"][provider] == len(documents)


FALLBACK_FAULTS = [
    ("status", {"status": 500}),
    ("status", {"status": 502}),
    ("status", {"status": 503}),
    ("status", {"status": 429, "retry_after": 1}),
    ("status", {"status": 401}),
    ("status", {"status": 403}),
    ("status", {"status": 404}),
    ("garbage", {}),
    ("wrong_count", {}),
    ("nan", {}),
    ("drop", {}),
]


@pytest.mark.parametrize("mode, options", FALLBACK_FAULTS, ids=lambda v: str(v))
@pytest.mark.parametrize("first", ["deepinfra", "fireworks"])
async def test_fallback_on_each_failure_class(make_gateway: GatewayFactory, emulator, first, mode, options):
    second = "fireworks" if first == "deepinfra" else "deepinfra"
    await add_fault(emulator, first, mode, **options)
    # Without retries on the same provider: this is about moving to the next one.
    gateway = await make_gateway(fallback=[first, second], resilience={"max_retries": 0})
    response = await gateway.post("/v1/inference/Qwen/Qwen3-Reranker-8B", json={"queries": [QUERY], "documents": DOCUMENTS})
    assert response.status == 200, await response.text()
    assert response.headers["X-Rerank-Provider"] == second
    assert (await response.json())["scores"] == pytest.approx(expected(), abs=1e-12)
    assert (await emulator_requests(emulator))[first] == 1


@pytest.mark.parametrize("mode", ["cut", "out_of_range", "duplicate_index"])
async def test_fallback_on_broken_indices(make_gateway: GatewayFactory, emulator, mode):
    await add_fault(emulator, "cohere", mode)
    gateway = await make_gateway(fallback=["cohere", "deepinfra"])
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert response.status == 200
    assert response.headers["X-Rerank-Provider"] == "deepinfra"


async def test_fallback_on_timeout_and_504_when_the_last_one_times_out(make_gateway: GatewayFactory, emulator):
    def quick_timeouts(raw: dict[str, Any]) -> None:
        for provider in raw["providers"].values():
            provider["timeout_seconds"] = 0.3

    await add_fault(emulator, "deepinfra", "hang")
    gateway = await make_gateway(fallback=["deepinfra", "fireworks"], edit=quick_timeouts)
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert response.status == 200 and response.headers["X-Rerank-Provider"] == "fireworks"

    await add_fault(emulator, "fireworks", "hang")
    response = await gateway.post("/v1/rerank", json={"query": QUERY + "?", "documents": DOCUMENTS})
    assert response.status == 504
    error = (await response.json())["error"]
    assert error["type"] == "upstream_timeout"
    assert "deepinfra: timed out after 0.3s" in error["message"] and "fireworks: timed out" in error["message"]


async def test_fallback_on_connection_refused(make_gateway: GatewayFactory, unused_tcp_port_factory):
    port = unused_tcp_port_factory()

    def dead_deepinfra(raw: dict[str, Any]) -> None:
        raw["providers"]["deepinfra"]["base_url"] = f"http://127.0.0.1:{port}"

    gateway = await make_gateway(fallback=["deepinfra", "fireworks"], edit=dead_deepinfra)
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert response.status == 200 and response.headers["X-Rerank-Provider"] == "fireworks"


async def test_all_failed_is_502_listing_every_reason_and_no_key(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=503)
    await add_fault(emulator, "fireworks", "status", status=401)
    gateway = await make_gateway(fallback=["deepinfra", "fireworks"])
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}, headers={"X-Request-ID": "r1"})
    assert response.status == 502
    text = await response.text()
    error = (await response.json())["error"]
    assert error["type"] == "all_providers_failed" and error["request_id"] == "r1"
    assert "deepinfra: HTTP 503" in error["message"] and "fireworks: HTTP 401" in error["message"]
    assert EMULATOR_KEY not in text
    assert response.headers["X-Rerank-Provider"] == "none"


async def test_provider_rejecting_the_request_stops_the_fallback(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=400)
    gateway = await make_gateway(fallback=["deepinfra", "fireworks"])
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert response.status == 502
    assert (await response.json())["error"]["type"] == "upstream_rejected"
    assert (await emulator_requests(emulator))["fireworks"] == 0


async def test_provider_without_key_is_skipped_and_says_why(make_gateway: GatewayFactory, emulator, monkeypatch):
    monkeypatch.setenv("NO_SUCH_KEY_SET", "")

    def keyless_deepinfra(raw: dict[str, Any]) -> None:
        raw["providers"]["deepinfra"]["api_key_env"] = "NO_SUCH_KEY_SET"

    gateway = await make_gateway(fallback=["deepinfra", "fireworks"], edit=keyless_deepinfra)
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert response.headers["X-Rerank-Provider"] == "fireworks"
    assert (await emulator_requests(emulator))["deepinfra"] == 0

    await add_fault(emulator, "fireworks", "status", status=503)
    response = await gateway.post("/v1/rerank", json={"query": "another question", "documents": DOCUMENTS})
    message = (await response.json())["error"]["message"]
    assert "deepinfra: skipped: no API key ($NO_SUCH_KEY_SET is empty)" in message
    # An error after the model was resolved says which model; X-Rerank-Cache only on answers.
    assert response.headers["X-Rerank-Model"] == MODEL and "X-Rerank-Cache" not in response.headers


async def test_sigmoid_transform_turns_logits_into_relevance(make_gateway: GatewayFactory, emulator):
    def logits(raw: dict[str, Any]) -> None:
        raw["providers"]["tei"]["score_transform"] = "sigmoid"

    gateway = await make_gateway(fallback=["tei"], edit=logits)
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert scores_from_ranked("results")(await response.json()) == pytest.approx(dict(enumerate(expected())), abs=1e-9)
    last_body = (await (await emulator.get("/_emulator/stats")).json())["last_body"]["tei"]
    assert last_body["raw_scores"] is True


async def test_scores_outside_unit_range_make_the_answer_invalid(make_gateway: GatewayFactory, aiohttp_server):
    async def logits_without_transform(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"results": [{"index": i, "relevance_score": 2.5} for i in range(len(body["documents"]))]})

    raw_server = web.Application()
    raw_server.router.add_post("/v1/rerank", logits_without_transform)
    server = await aiohttp_server(raw_server)

    def raw_cohere(raw: dict[str, Any]) -> None:
        raw["providers"]["cohere"]["base_url"] = str(server.make_url("")).rstrip("/")

    gateway = await make_gateway(fallback=["cohere", "deepinfra"], edit=raw_cohere)
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert response.status == 200 and response.headers["X-Rerank-Provider"] == "deepinfra"

    gateway = await make_gateway(fallback=["cohere"], edit=raw_cohere)
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert response.status == 502
    assert "outside [0, 1]" in (await response.json())["error"]["message"]


async def test_cross_model_fallback_only_when_configured_and_never_cached(make_gateway: GatewayFactory, emulator):
    def two_models(raw: dict[str, Any]) -> None:
        raw["models"]["other-reranker"] = {"fallback": ["tei"], "quality": {"probe_interval_seconds": 0}}
        raw["models"][MODEL]["fallback_models"] = ["other-reranker"]

    await add_fault(emulator, "deepinfra", "status", status=500, count=1)  # 500: not retried
    gateway = await make_gateway(fallback=["deepinfra"], edit=two_models)
    body = {"query": QUERY, "documents": DOCUMENTS}
    response = await gateway.post("/v1/rerank", json=body)
    assert response.status == 200
    assert response.headers["X-Rerank-Model"] == "other-reranker"
    assert response.headers["X-Rerank-Provider"] == "tei"

    # The other model's scores were not cached as this model's: the next call goes upstream.
    response = await gateway.post("/v1/rerank", json=body)
    assert response.headers["X-Rerank-Model"] == MODEL
    assert response.headers["X-Rerank-Provider"] == "deepinfra"


async def test_without_fallback_models_a_model_never_crosses(make_gateway: GatewayFactory, emulator):
    def two_models(raw: dict[str, Any]) -> None:
        raw["models"]["other-reranker"] = {"fallback": ["tei"], "quality": {"probe_interval_seconds": 0}}

    await add_fault(emulator, "deepinfra", "status", status=503)
    gateway = await make_gateway(fallback=["deepinfra"], edit=two_models)
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert response.status == 502
    assert (await emulator_requests(emulator))["tei"] == 0


async def test_cross_model_fallback_never_mixes_with_cached_scores(make_gateway: GatewayFactory, emulator):
    def two_models(raw: dict[str, Any]) -> None:
        raw["models"]["other-reranker"] = {"fallback": ["tei"], "quality": {"probe_interval_seconds": 0}}
        raw["models"][MODEL]["fallback_models"] = ["other-reranker"]

    gateway = await make_gateway(fallback=["deepinfra"], edit=two_models)
    await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS[:3]})
    await add_fault(emulator, "deepinfra", "status", status=503)
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert response.headers["X-Rerank-Model"] == "other-reranker"
    assert response.headers["X-Rerank-Cache"] == "hits=0; misses=5"
    stats = await (await emulator.get("/_emulator/stats")).json()
    assert stats["documents"]["tei"] == len(DOCUMENTS)


async def test_model_resolution(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    for name in (MODEL, "Qwen/Qwen3-Reranker-8B", "accounts/fireworks/models/qwen3-reranker-8b", None, ""):
        body: dict[str, Any] = {"query": QUERY, "documents": DOCUMENTS}
        if name is not None:
            body["model"] = name  # "" is no model (Cohere's ClientV2 sends it), so the default
        response = await gateway.post("/v1/rerank", json=body)
        assert response.status == 200 and response.headers["X-Rerank-Model"] == MODEL

    response = await gateway.post("/v1/rerank", json={"model": "rerank-v3.5", "query": QUERY, "documents": DOCUMENTS})
    assert response.status == 404
    error = (await response.json())["error"]
    assert error["type"] == "model_not_found" and MODEL in error["message"] and "rerank-v3.5" in error["message"]

    response = await gateway.post("/v1/inference/BAAI/bge-reranker-v2-m3", json={"queries": [QUERY], "documents": DOCUMENTS})
    assert response.status == 404

    models = await (await gateway.get("/v1/models")).json()
    assert [entry["id"] for entry in models["data"]] == [MODEL]
    assert "Qwen/Qwen3-Reranker-8B" in models["data"][0]["aliases"]


async def test_repeated_pairs_come_from_the_cache(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway()
    body = {"queries": [QUERY], "documents": DOCUMENTS[:3]}
    first = await gateway.post("/v1/inference/Qwen/Qwen3-Reranker-8B", json=body)
    assert first.headers["X-Rerank-Cache"] == "hits=0; misses=3"

    response = await gateway.post("/v1/inference/Qwen/Qwen3-Reranker-8B", json={"queries": [QUERY], "documents": DOCUMENTS})
    assert response.headers["X-Rerank-Cache"] == "hits=3; misses=2"
    assert (await response.json())["scores"] == pytest.approx(expected(), abs=1e-12)
    assert (await (await emulator.get("/_emulator/stats")).json())["documents"]["deepinfra"] == 5

    response = await gateway.post("/v1/inference/Qwen/Qwen3-Reranker-8B", json={"queries": [QUERY], "documents": DOCUMENTS})
    assert response.headers["X-Rerank-Provider"] == "cache"
    assert (await response.json())["input_tokens"] == 0
    assert (await emulator_requests(emulator))["deepinfra"] == 2


async def test_duplicate_passages_are_scored_once(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway()
    documents = DOCUMENTS + DOCUMENTS[:2]
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": documents})
    assert scores_from_ranked("results")(await response.json()) == pytest.approx(dict(enumerate(expected(documents))), abs=1e-12)
    assert (await (await emulator.get("/_emulator/stats")).json())["documents"]["deepinfra"] == len(DOCUMENTS)


def test_only_a_range_is_taken_for_every_slot() -> None:
    """The service takes a shortcut when every slot is wanted; a list of as many slots in another
    order is not that, and must pick its keys one by one (else a score lands on another pair's key)."""
    from gateway.scoring.job import at_slots, every_slot

    keys = ["k0", "k1", "k2"]
    assert every_slot(range(3), 3) and at_slots(keys, range(3)) is keys
    assert not every_slot([2, 1, 0], 3) and at_slots(keys, [2, 1, 0]) == ["k2", "k1", "k0"]
    assert not every_slot([0, 1, 2], 3) and at_slots(keys, [0, 1, 2]) == keys
    assert not every_slot(range(2), 3) and at_slots(keys, range(2)) == ["k0", "k1"]


async def test_pairs_repeated_across_queries_are_scored_once_each(make_gateway: GatewayFactory, emulator):
    """A many-query batch: the same passage under two queries is two pairs, the same pair twice is one."""
    gateway = await make_gateway()
    other = "which plan has the lowest price?"
    queries = [QUERY, other, QUERY, other, QUERY]
    documents = [DOCUMENTS[0], DOCUMENTS[0], DOCUMENTS[0], DOCUMENTS[1], DOCUMENTS[1]]
    response = await gateway.post("/v1/inference/Qwen/Qwen3-Reranker-8B", json={"queries": queries, "documents": documents})
    assert response.status == 200, await response.text()
    want = [emulated_score(q, d) for q, d in zip(queries, documents)]
    assert (await response.json())["scores"] == pytest.approx(want, abs=1e-12)
    assert response.headers["X-Rerank-Cache"] == "hits=0; misses=4"
    assert (await (await emulator.get("/_emulator/stats")).json())["documents"]["deepinfra"] == 4


@pytest.mark.parametrize("header, second_provider, writes", [("no-cache", "deepinfra", True), ("no-store", "deepinfra", False)])
async def test_cache_control_bypasses_the_cache(make_gateway: GatewayFactory, emulator, header, second_provider, writes):
    gateway = await make_gateway()
    body = {"query": QUERY, "documents": DOCUMENTS}
    await gateway.post("/v1/rerank", json=body)
    response = await gateway.post("/v1/rerank", json=body, headers={"Cache-Control": header})
    assert response.headers["X-Rerank-Provider"] == second_provider
    assert response.headers["X-Rerank-Cache"] == "hits=0; misses=5"

    fresh = {"query": "a question never asked", "documents": DOCUMENTS}
    await gateway.post("/v1/rerank", json=fresh, headers={"Cache-Control": header})
    response = await gateway.post("/v1/rerank", json=fresh)
    assert (response.headers["X-Rerank-Provider"] == "cache") is writes


async def test_request_id_is_generated_when_absent_or_unsafe(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    for headers in ({}, {"X-Request-ID": "x" * 500}, {"X-Request-ID": "bad id with spaces"}):
        response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}, headers=headers)
        request_id = response.headers["X-Request-ID"]
        assert len(request_id) == 32 and request_id != headers.get("X-Request-ID")


async def test_healthz(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    response = await gateway.get("/healthz")
    assert response.status == 200 and (await response.json()) == {"status": "ok"}


async def test_the_request_deadline_bounds_the_whole_fallback_chain(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "hang")
    await add_fault(emulator, "fireworks", "hang")
    gateway = await make_gateway(server={"request_timeout_seconds": 0.4})
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert response.status == 504
    error = (await response.json())["error"]
    assert error["type"] == "deadline_exceeded" and "0.4s" in error["message"]


async def test_a_client_may_lower_the_deadline_but_not_raise_it(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "*", "hang")
    gateway = await make_gateway(server={"request_timeout_seconds": 30})
    started = time.perf_counter()
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}, headers={"X-Request-Timeout": "0.3"})
    assert response.status == 504 and time.perf_counter() - started < 5

    for bad in ("soon", "-1", "0", "nan", "inf"):
        response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}, headers={"X-Request-Timeout": bad})
        assert response.status == 400, bad
        assert "X-Request-Timeout" in (await response.json())["error"]["message"]
