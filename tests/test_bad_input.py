"""Bad client input: a 4xx with the one error body, before any provider is called."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.gateway import GatewayFactory, emulator_requests

DI = "/v1/inference/Qwen/Qwen3-Reranker-8B"
LIMITS = {"max_documents": 4, "max_document_chars": 50, "max_query_chars": 40, "max_queries": 2,
          "max_instruction_chars": 30, "max_body_bytes": 4096}

# (path, body as bytes or JSON, headers, status, error type, words the message must hold)
BAD_INPUTS: list[tuple[str, Any, dict[str, str], int, str, str]] = [
    ("/v1/rerank", b"{not json", {}, 400, "bad_request", "not valid JSON"),
    ("/v1/rerank", b'{"query": "\xff\xfe", "documents": ["a"]}', {}, 400, "bad_request", "not valid UTF-8"),
    ("/v1/rerank", b"", {}, 400, "bad_request", "empty"),
    ("/v1/rerank", b"[" * 1100 + b"]" * 1100, {}, 400, "bad_request", "not valid JSON"),
    ("/v1/rerank", [1, 2], {}, 422, "invalid_request", "body: expected a JSON object"),
    # Parsed, but its answer could not be written (orjson stops at 254 levels): refused before a paid call.
    ("/v1/rerank", b'{"query": "q", "return_documents": true, "documents": [{"text": "t", "m": '
     + b'{"a": ' * 300 + b"1" + b"}" * 300 + b"}]}", {}, 422, "invalid_request",
     "documents[0]: nested deeper than 250 levels, too deep to return with return_documents"),
    ("/v1/rerank", {"documents": ["a"]}, {}, 422, "invalid_request", "query: required"),
    ("/v1/rerank", {"query": "", "documents": ["a"]}, {}, 422, "invalid_request", "query: must not be empty"),
    ("/v1/rerank", {"query": 7, "documents": ["a"]}, {}, 422, "invalid_request", "query: expected a string, got a number"),
    ("/v1/rerank", {"query": "q"}, {}, 422, "invalid_request", "documents: required"),
    ("/v1/rerank", {"query": "q", "documents": []}, {}, 422, "invalid_request", "documents: must not be empty"),
    ("/v1/rerank", {"query": "q", "documents": "a"}, {}, 422, "invalid_request", "documents: expected a list"),
    ("/v1/rerank", {"query": "q", "documents": ["a", 3]}, {}, 422, "invalid_request", "documents[1]: expected a string"),
    ("/v1/rerank", {"query": "q", "documents": ["a", {"txt": "b"}]}, {}, 422, "invalid_request", "documents[1]"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, {}, 422, "invalid_request", "top_n: must be at least 1"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": "2"}, {}, 422, "invalid_request", "top_n: expected a whole number"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 1.5}, {}, 422, "invalid_request", "top_n"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": True}, {}, 422, "invalid_request", "top_n"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 1e29}, {}, 422, "invalid_request",
     "top_n: expected a whole number, got 1e+29"),
    ("/inference/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 1.5}, {}, 422, "invalid_request",
     "top_n: expected a whole number, got 1.5"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 2**60}, {}, 422, "invalid_request", "top_n: must be at most"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "rank_fields": "title"}, {}, 422, "invalid_request",
     "rank_fields: expected a list"),
    ("/v1/rerank", {"query": "q", "documents": [{"title": "a"}, 5], "rank_fields": ["title"]}, {}, 422,
     "invalid_request", "documents[1]: expected a string or an object"),
    ("/v1/rerank", {"query": "q", "documents": [{"title": "a"}]}, {}, 422, "invalid_request",
     "documents[0]: expected a string or an object with a string 'text'"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "return_documents": "yes"}, {}, 422, "invalid_request", "return_documents"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "model": 5}, {}, 422, "invalid_request", "model: expected a string"),
    ("/v1/rerank", {"query": "q", "documents": ["a"] * 5}, {}, 413, "payload_too_large", "server.max_documents = 4"),
    ("/v1/rerank", {"query": "q", "documents": ["a", "b" * 51]}, {}, 413, "payload_too_large", "documents[1]: 51 characters"),
    ("/v1/rerank", {"query": "q" * 41, "documents": ["a"]}, {}, 413, "payload_too_large", "server.max_query_chars = 40"),
    ("/v1/rerank", {"query": "q", "documents": ["a" * 40] * 4, "pad": "x" * 4096}, {}, 413, "payload_too_large",
     "server.max_body_bytes = 4096"),
    ("/rerank", {"query": "q", "texts": [1]}, {}, 422, "invalid_request", "texts[0]: expected a string"),
    ("/rerank", {"query": "q", "texts": ["a"], "raw_scores": 1}, {}, 422, "invalid_request", "raw_scores"),
    ("/inference/v1/rerank", {"query": "q", "documents": ["a"], "task": 3}, {}, 422, "invalid_request", "task: expected a string"),
    (DI, {"queries": ["q", "r"], "documents": ["a", "b", "c"]}, {}, 422, "invalid_request", "2 queries for 3 documents"),
    (DI, {"queries": [], "documents": ["a"]}, {}, 422, "invalid_request", "queries: must not be empty"),
    (DI, {"queries": "q", "documents": ["a"]}, {}, 422, "invalid_request", "queries: expected a list"),
    (DI, {"queries": ["q"], "documents": ["a"], "passages": ["b"]}, {}, 422, "invalid_request", "either documents or passages"),
    (DI, {"queries": ["q"], "documents": ["a"], "instruction": ["x"]}, {}, 422, "invalid_request", "instruction: expected a string"),
    (DI, {"queries": ["q"], "documents": ["a"], "instruction": "i" * 31}, {}, 413, "payload_too_large", "server.max_instruction_chars"),
    (DI, {"queries": ["q", "r", "s"], "documents": ["a", "b", "c"]}, {}, 413, "payload_too_large", "server.max_queries = 2"),
    ("/v1/inference/nobody/no-model", {"queries": ["q"], "documents": ["a"]}, {}, 404, "model_not_found", "qwen3-reranker-8b"),
    ("/v3/rerank", {"query": "q", "documents": ["a"]}, {}, 404, "not_found", "/v1/rerank"),
    ("/v1/rerank", b'{"query": "q", "documents": ["a"], "query": "other"}', {}, 422, "invalid_request",
     "key 'query' appears twice"),
    ("/v1/rerank", b'{"query": "q", "documents": [{"text": "a", "text": "b"}]}', {}, 422, "invalid_request",
     "key 'text' appears twice"),
    (DI, b'{"queries": ["q"], "documents": ["a"], "passages": ["b"], "documents": ["c"]}', {}, 422,
     "invalid_request", "key 'documents' appears twice"),
]


@pytest.mark.parametrize(
    "path, body, headers, status, error_type, words", BAD_INPUTS, ids=[f"{i}-{b[4]}" for i, b in enumerate(BAD_INPUTS)]
)
async def test_bad_input_is_a_clear_4xx(make_gateway: GatewayFactory, emulator, path, body, headers, status, error_type, words):
    gateway = await make_gateway(server=LIMITS)
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    response = await gateway.post(path, headers={"X-Request-ID": "bad-1", **headers}, **kwargs)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    error = (await response.json())["error"]
    assert set(error) == {"type", "message", "request_id"}
    assert error["type"] == error_type
    assert words in error["message"]
    assert error["request_id"] == "bad-1" == response.headers["X-Request-ID"]
    assert sum((await emulator_requests(emulator)).values()) == 0


async def test_repeated_key_names_inside_texts_are_not_duplicates(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    body = {"query": "query", "documents": ['a "query" and a "documents" key', "query", "b"]}
    response = await gateway.post("/v1/rerank", json=body)
    assert response.status == 200, await response.text()
    objects = {"query": "q", "documents": [{"text": "a"}, {"text": "b"}, {"text": "c"}]}
    assert (await gateway.post("/v1/rerank", json=objects)).status == 200


async def test_wrong_method_is_405_with_the_error_body(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    response = await gateway.get("/v1/rerank")
    assert response.status == 405
    assert (await response.json())["error"]["type"] == "method_not_allowed"
    assert response.headers["Allow"] == "POST"


async def test_a_model_is_required_without_a_default(make_gateway: GatewayFactory):
    gateway = await make_gateway(server={"default_model": None})
    response = await gateway.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
    assert response.status == 422
    assert "model: required" in (await response.json())["error"]["message"]
