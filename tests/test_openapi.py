"""The OpenAPI document stays honest: real requests and the gateway's real answers must fit it.

Each request is sent to a gateway whose providers are the emulator; its body is validated
against the operation's request schema, and the answer's status, headers and body against the
operation's responses. Bodies the gateway refuses with 422 must be refused by the schema too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.app import create_app
from gateway.config import load_config, parse_config
from gateway.web.openapi import openapi_spec
from tests.support.config import gateway_config, write_config
from tests.support.gateway import MODEL, GatewayFactory, add_fault, emulator_url

SPEC_URI = "urn:rerank-gateway:openapi"
QUERY = "how much does bankruptcy through the MFC cost?"
DOCUMENTS = ["The MFC in Kazan opens at 8:00.", "Out-of-court bankruptcy through the MFC is free.", "Weather in Kazan."]
# What every HTTP answer carries about its own framing; the spec documents the headers of the gateway's own.
HTTP_FRAMING_HEADERS = {"content-type", "content-length", "date", "server", "connection", "keep-alive", "transfer-encoding"}
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


class Spec:
    """The spec as a validator of requests and answers, $refs resolved against the document itself."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.registry = Registry().with_resource(SPEC_URI, Resource.from_contents(document, default_specification=DRAFT202012))

    def validator(self, pointer: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"{SPEC_URI}#{pointer}"}, registry=self.registry)

    def follow(self, pointer: str) -> tuple[Any, str]:
        """The node at pointer, through any $ref, and the pointer it finally lives at."""
        node: Any = self.document
        for part in pointer.lstrip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        if isinstance(node, dict) and "$ref" in node and node["$ref"].startswith("#/"):
            return self.follow(node["$ref"][1:])
        return node, pointer

    def operation_pointer(self, path: str, method: str) -> str:
        assert path in self.document["paths"], f"{path} is not in the spec"
        assert method.lower() in self.document["paths"][path], f"{method} {path} is not in the spec"
        return f"/paths/{escape(path)}/{method.lower()}"

    def request_errors(self, path: str, method: str, body: Any) -> list[str]:
        pointer = f"{self.operation_pointer(path, method)}/requestBody/content/application~1json/schema"
        return [error.message for error in self.validator(pointer).iter_errors(body)]

    def check_request(self, path: str, method: str, body: Any) -> None:
        errors = self.request_errors(path, method, body)
        assert not errors, f"{method} {path}: the spec refuses a body the gateway takes: {errors}"

    async def check_answer(self, path: str, method: str, response: ClientResponse) -> Any:
        """Status declared, declared headers present and valid, body valid; returns the body."""
        responses = f"{self.operation_pointer(path, method)}/responses"
        declared = self.follow(responses)[0]
        assert str(response.status) in declared, f"{method} {path}: status {response.status} is not in the spec: {await response.text()}"
        answer, pointer = self.follow(f"{responses}/{response.status}")
        for name in answer.get("headers", {}):
            header, header_pointer = self.follow(f"{pointer}/headers/{escape(name)}")
            value = response.headers.get(name)
            if header.get("required"):
                assert value is not None, f"{method} {path} {response.status}: header {name} missing"
            if value is not None:
                self.validator(f"{header_pointer}/schema").validate(value)
        documented = {name.lower() for name in answer.get("headers", {})}
        undocumented = {name for name in response.headers if name.lower() not in documented | HTTP_FRAMING_HEADERS}
        assert not undocumented, f"{method} {path} {response.status}: headers sent but not in the spec: {undocumented}"
        (media_type,) = answer["content"]
        assert response.content_type == media_type
        if media_type != "application/json":
            return await response.text()
        body = await response.json()
        self.validator(f"{pointer}/content/{escape(media_type)}/schema").validate(body)
        return body

    def check_error(self, body: Any, status: int, error_type: str) -> None:
        self.validator("/components/schemas/Error").validate(body)
        assert body["error"]["type"] == error_type, (status, body)


def escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


@pytest.fixture(scope="module")
def spec() -> Spec:
    return Spec(openapi_spec())


def test_the_spec_is_valid_openapi_3_1():
    validator = pytest.importorskip("openapi_spec_validator", reason="openapi-spec-validator is not installed")
    document = openapi_spec()
    assert document["openapi"].startswith("3.1")
    validator.validate(document)
    assert json.loads(json.dumps(document)) == document  # plain JSON, servable as /openapi.json


def test_every_route_the_app_serves_is_in_the_spec(spec: Spec):
    app = create_app(parse_config(gateway_config("http://127.0.0.1:9", ["deepinfra"])))
    served = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert served, "the app serves no routes?"
    described = {(path, method) for path, item in spec.document["paths"].items() for method in item}
    assert served <= described, f"served but not described: {sorted(served - described)}"


def test_every_example_in_the_spec_fits_its_schema(spec: Spec):
    for name, schema in spec.document["components"]["schemas"].items():
        for example in schema.get("examples", []):
            spec.validator(f"/components/schemas/{name}").validate(example)


# --- one request per dialect --------------------------------------------------------------------

DIALECT_REQUESTS: dict[str, tuple[str, Any]] = {
    "deepinfra": ("/v1/inference/Qwen/Qwen3-Reranker-8B", {"queries": [QUERY], "documents": DOCUMENTS}),
    "deepinfra-passages-pairwise": (
        "/v1/inference/Qwen/Qwen3-Reranker-8B",
        {"queries": [QUERY, "where is the MFC?", QUERY], "passages": DOCUMENTS, "instruction": INSTRUCTION},
    ),
    "fireworks": ("/inference/v1/rerank", {
        "model": "accounts/fireworks/models/qwen3-reranker-8b", "query": QUERY, "documents": DOCUMENTS,
        "top_n": 2, "return_documents": True, "task": INSTRUCTION,
    }),
    "fireworks-text-objects": ("/inference/v1/rerank", {"query": QUERY, "documents": [{"text": d} for d in DOCUMENTS]}),
    "cohere-v1": ("/v1/rerank", {"query": QUERY, "documents": [{"text": d} for d in DOCUMENTS], "return_documents": True}),
    "cohere-v2": ("/v2/rerank", {"model": MODEL, "query": QUERY, "documents": DOCUMENTS, "top_n": 2, "max_tokens_per_doc": 4096}),
    "cohere-root": ("/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": None}),
    "tei": ("/rerank", {"query": QUERY, "texts": DOCUMENTS, "truncate": True}),
    "tei-raw-with-text": ("/rerank", {"query": QUERY, "texts": DOCUMENTS, "raw_scores": True, "return_text": True}),
}
SPEC_PATHS = {"/v1/inference/Qwen/Qwen3-Reranker-8B": "/v1/inference/{model}"}


@pytest.mark.parametrize("dialect", DIALECT_REQUESTS)
async def test_each_dialect_fits_the_spec_fresh_and_cached(make_gateway: GatewayFactory, spec: Spec, dialect: str):
    path, body = DIALECT_REQUESTS[dialect]
    spec_path = SPEC_PATHS.get(path, path)
    spec.check_request(spec_path, "post", body)
    gateway = await make_gateway()
    fresh = await gateway.post(path, json=body)
    assert fresh.status == 200, await fresh.text()
    assert fresh.headers["X-Rerank-Provider"] == "deepinfra"
    await spec.check_answer(spec_path, "post", fresh)
    cached = await gateway.post(path, json=body, headers={"X-Request-ID": "kb-42"})
    assert cached.headers["X-Rerank-Provider"] == "cache"
    assert cached.headers["X-Request-ID"] == "kb-42"
    await spec.check_answer(spec_path, "post", cached)


# --- errors ---------------------------------------------------------------------------------------

# (method, path, body or raw bytes, headers, status, error type); max_documents is 3 here.
ERROR_CASES: dict[str, tuple[str, str, Any, dict[str, str], int, str]] = {
    "query-missing": ("post", "/v1/rerank", {"documents": DOCUMENTS}, {}, 422, "invalid_request"),
    "documents-empty": ("post", "/v2/rerank", {"query": QUERY, "documents": []}, {}, 422, "invalid_request"),
    "query-empty": ("post", "/v2/rerank", {"query": "", "documents": DOCUMENTS}, {}, 422, "invalid_request"),
    "documents-and-passages": ("post", "/v1/inference/Qwen/Qwen3-Reranker-8B",
                               {"queries": [QUERY], "documents": ["a"], "passages": ["b"]}, {}, 422, "invalid_request"),
    "top-n-zero": ("post", "/inference/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": 0}, {}, 422, "invalid_request"),
    "top-n-boolean": ("post", "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": True}, {}, 422, "invalid_request"),
    "tei-text-objects": ("post", "/rerank", {"query": QUERY, "texts": [{"text": "a"}]}, {}, 422, "invalid_request"),
    "body-a-list": ("post", "/v2/rerank", ["not", "an", "object"], {}, 422, "invalid_request"),
    "unknown-model": ("post", "/v2/rerank", {"model": "no-such-model", "query": QUERY, "documents": DOCUMENTS}, {},
                      404, "model_not_found"),
    "too-many-documents": ("post", "/v2/rerank", {"query": QUERY, "documents": DOCUMENTS * 2}, {}, 413, "payload_too_large"),
    "not-json": ("post", "/v2/rerank", b"{not json", {}, 400, "bad_request"),
    "bad-timeout": ("post", "/v2/rerank", {"query": QUERY, "documents": DOCUMENTS}, {"X-Request-Timeout": "-1"},
                    400, "bad_request"),
    "admin-off": ("post", "/admin/reload", None, {}, 404, "not_found"),
    "admin-spend-off": ("get", "/admin/spend", None, {}, 404, "not_found"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
async def test_error_answers_fit_the_spec(make_gateway: GatewayFactory, spec: Spec, case: str):
    method, path, body, headers, status, error_type = ERROR_CASES[case]
    spec_path = SPEC_PATHS.get(path, path)
    gateway = await make_gateway(server={"max_documents": 3})
    if isinstance(body, bytes):
        response = await gateway.request(method, path, data=body, headers=headers)
    else:
        response = await gateway.request(method, path, json=body, headers=headers)
    assert response.status == status, await response.text()
    spec.check_error(await spec.check_answer(spec_path, method, response), status, error_type)
    if body is not None and not isinstance(body, bytes):
        refused = spec.request_errors(spec_path, method, body)
        if status == 422:
            assert refused, f"the gateway refuses {body!r} with 422, the spec takes it"
        else:
            assert not refused, f"the spec refuses a body the gateway decodes: {refused}"


@pytest.mark.parametrize("method, path", [("get", "/v1/rerank"), ("get", "/nowhere"), ("delete", "/healthz")])
async def test_unrouted_requests_answer_the_error_body(make_gateway: GatewayFactory, spec: Spec, method: str, path: str):
    gateway = await make_gateway()
    response = await gateway.request(method, path)
    assert response.status in (404, 405)
    spec.check_error(await response.json(), response.status, "not_found" if response.status == 404 else "method_not_allowed")
    assert path not in spec.document["paths"] or method not in spec.document["paths"][path]


@pytest.mark.parametrize("fault, status, error_type", [
    ({"mode": "status", "status": 500}, 502, "all_providers_failed"),
    ({"mode": "status", "status": 400}, 502, "upstream_rejected"),
])
async def test_upstream_failures_fit_the_spec(make_gateway: GatewayFactory, emulator, spec: Spec, fault, status, error_type):
    await add_fault(emulator, "*", **fault)
    gateway = await make_gateway()
    response = await gateway.post("/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert response.status == status, await response.text()
    spec.check_error(await spec.check_answer("/v2/rerank", "post", response), status, error_type)


async def test_budget_exhausted_fits_the_spec(make_gateway: GatewayFactory, emulator, spec: Spec):
    def no_budget(raw: dict[str, Any]) -> None:
        for provider in raw["providers"].values():
            provider["budget"] = {"daily_usd": 0}

    gateway = await make_gateway(edit=no_budget)
    response = await gateway.post("/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert response.status == 429, await response.text()
    spec.check_error(await spec.check_answer("/v2/rerank", "post", response), 429, "budget_exhausted")


@pytest.mark.parametrize("dialect", ["deepinfra", "fireworks", "cohere-v1", "tei"])
async def test_degraded_lexical_answers_fit_the_spec(make_gateway: GatewayFactory, emulator, spec: Spec, dialect: str):
    await add_fault(emulator, "*", "status", status=500)
    gateway = await make_gateway(resilience={"last_resort": "lexical", "max_retries": 0})
    path, body = DIALECT_REQUESTS[dialect]
    response = await gateway.post(path, json=body)
    assert response.status == 200, await response.text()
    assert response.headers["X-Rerank-Provider"] == "degraded-lexical"
    answer = await spec.check_answer(SPEC_PATHS.get(path, path), "post", response)
    if isinstance(answer, dict):
        assert answer.get("degraded") is True or answer["meta"]["warnings"]


async def test_the_deadline_answer_fits_the_spec(make_gateway: GatewayFactory, emulator, spec: Spec):
    await add_fault(emulator, "*", "hang")
    gateway = await make_gateway()
    response = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}, headers={"X-Request-Timeout": "0.2"})
    assert response.status == 504, await response.text()
    spec.check_error(await spec.check_answer("/v1/rerank", "post", response), 504, "deadline_exceeded")


async def test_client_keys_fit_the_spec(make_gateway: GatewayFactory, spec: Spec, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CLIENT_KEYS", "kb-key, other-key")
    gateway = await make_gateway(server={"api_keys_env": "CLIENT_KEYS"})
    body = {"query": QUERY, "documents": DOCUMENTS}
    refused = await gateway.post("/v2/rerank", json=body, headers={"Authorization": "Bearer wrong"})
    assert refused.status == 401
    spec.check_error(await spec.check_answer("/v2/rerank", "post", refused), 401, "unauthorized")
    allowed = await gateway.post("/v2/rerank", json=body, headers={"Authorization": "Bearer kb-key"})
    assert allowed.status == 200
    await spec.check_answer("/v2/rerank", "post", allowed)
    assert spec.document["components"]["securitySchemes"]["clientKey"]["scheme"] == "bearer"


# --- ops and admin endpoints --------------------------------------------------------------------


async def test_models_and_health_fit_the_spec(make_gateway: GatewayFactory, spec: Spec):
    gateway = await make_gateway()
    models = await spec.check_answer("/v1/models", "get", await gateway.get("/v1/models"))
    assert models["data"][0]["id"] == MODEL
    assert await spec.check_answer("/healthz", "get", await gateway.get("/healthz")) == {"status": "ok"}


async def test_status_history_fits_the_spec(make_gateway: GatewayFactory, emulator, spec: Spec):
    gateway = await make_gateway(resilience={"last_resort": "lexical", "max_retries": 0})
    assert (await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})).status == 200
    assert (await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})).status == 200
    await add_fault(emulator, "deepinfra", "status", status=400, count=1)  # refused: no fallback, no last resort
    assert (await gateway.post("/v1/rerank", json={"query": "another", "documents": DOCUMENTS})).status == 502
    await add_fault(emulator, "*", "status", status=500)  # every provider down: BM25 answers
    degraded = await gateway.post("/v1/rerank", json={"query": "a third", "documents": DOCUMENTS})
    assert degraded.headers["X-Rerank-Provider"] == "degraded-lexical"
    history = await spec.check_answer("/status.json", "get", await gateway.get("/status.json"))
    # Summed over the hour: the requests may straddle a minute's turn.
    assert {outcome: sum(counts) for outcome, counts in history["requests"].items()} == {
        "cache": 1, "provider": 1, "lexical": 1, "error": 1}
    assert any(history["p95_ms"]["deepinfra"]) and sum(history["spend_usd"]["deepinfra"]) > 0


async def test_admin_endpoints_fit_the_spec(aiohttp_client, emulator, spec: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(emulator_url(emulator), server={"admin_key_env": "ADMIN_KEY", "reload_poll_seconds": 0}))
    gateway = await aiohttp_client(create_app(load_config(config), config_path=config))

    wrong = await gateway.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    spec.check_error(await spec.check_answer("/admin/reload", "post", wrong), 401, "unauthorized")

    admin = {"Authorization": "Bearer admin-secret"}
    reloaded = await spec.check_answer("/admin/reload", "post", await gateway.post("/admin/reload", headers=admin))
    assert reloaded["models"] == {MODEL: ["deepinfra", "fireworks"]}

    assert (await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})).status == 200
    spend = await spec.check_answer("/admin/spend", "get", await gateway.get("/admin/spend", headers=admin))
    assert spend["providers"]["deepinfra"]["today"]["tokens"] > 0
    wrong = await gateway.get("/admin/spend", headers={"Authorization": "Bearer nope"})
    spec.check_error(await spec.check_answer("/admin/spend", "get", wrong), 401, "unauthorized")

    config.write_text(config.read_text().replace('kind = "fireworks"', 'kind = "fireworx"'))
    refused = await gateway.post("/admin/reload", headers=admin)
    assert refused.status == 422
    spec.check_error(await spec.check_answer("/admin/reload", "post", refused), 422, "invalid_config")


async def test_client_admin_endpoints_fit_the_spec(make_gateway, spec: Spec, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")
    gateway = await make_gateway(server={"admin_key_env": "ADMIN_KEY"}, teams={"search": {}})
    admin = {"Authorization": "Bearer admin-secret"}
    body = {"name": "job", "team": "search", "models": [MODEL], "budget": {"daily_usd": 1.0},
            "limits": {"requests_per_minute": 10}}
    spec.check_request("/admin/clients", "post", body)
    created = await spec.check_answer("/admin/clients", "post", await gateway.post("/admin/clients", json=body, headers=admin))
    assert created["name"] == "job"
    again = await gateway.post("/admin/clients", json=body, headers=admin)
    spec.check_error(await spec.check_answer("/admin/clients", "post", again), 409, "conflict")
    bad = await gateway.post("/admin/clients", json={"name": "x", "team": "nobody"}, headers=admin)
    spec.check_error(await spec.check_answer("/admin/clients", "post", bad), 422, "invalid_request")
    listed = await spec.check_answer("/admin/clients", "get", await gateway.get("/admin/clients", headers=admin))
    assert [client["name"] for client in listed["clients"]] == ["job"]
    change = {"limits": {"requests_per_minute": 5}}
    spec.check_request("/admin/clients/{name}", "patch", change)
    await spec.check_answer("/admin/clients/{name}", "patch",
                            await gateway.patch("/admin/clients/job", json=change, headers=admin))
    await spec.check_answer("/admin/clients/{name}/rotate", "post",
                            await gateway.post("/admin/clients/job/rotate", json={"grace_seconds": 5}, headers=admin))
    assert (await gateway.delete("/admin/clients/job", headers=admin)).status == 204
