"""Cohere's official Python SDK against the gateway, unchanged but for `base_url`.

The acceptance criterion: a client written for Cohere's rerank API works against the gateway with
only the base URL swapped. These tests drive the real `cohere` package (5.10 and later: the first
with a v2 rerank; its async and sync clients, v1 and v2 APIs) over real sockets: SDK -> gateway -> provider emulator. Nothing in the
SDK or the gateway is mocked; the sync clients run in a thread so the in-process servers keep
serving.

What the SDK does on the wire (checked in `test_what_the_sdk_sends`): `base_url` is the gateway's
root (the SDK appends `v1/rerank` or `v2/rerank` itself), it always sends
`Authorization: Bearer <api_key>` (a key must be given or the client refuses to start; the gateway
ignores it), its `X-Fern-*` headers and, in newer versions (5.21, 7.x), `User-Agent: cohere/<version>`.
Kept passing by hand on cohere 5.10.0, 5.11.4, 5.21.1 and 7.3.1.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import cohere
import httpx
import pytest
from cohere.core.api_error import ApiError

from gateway.emulator import emulated_score
from tests.support.config import gateway_config, local_url, write_config
from tests.support.gateway import MODEL, GatewayFactory
from tests.support.processes import free_port, running

pytestmark = [pytest.mark.clients]

QUERY = "how much does bankruptcy through the MFC cost?"
DOCUMENTS = [
    "The MFC in Kazan opens at 8:00.",
    "Out-of-court bankruptcy through the MFC is free.",
    "Bankruptcy through a court costs about 25,000 rubles.",
    "Weather in Kazan is mild in May.",
    "How much does a passport cost?",
    "Bankruptcy through the MFC: how much does it cost and who may apply?",
]
SDK_KEY = "any-key-the-gateway-ignores"
FLAVORS = ["async", "sync"]
MODEL_NAMES = [MODEL, "Qwen/Qwen3-Reranker-8B"]


def gateway_url(gateway: Any) -> str:
    return str(gateway.make_url("")).rstrip("/")


class Wire:
    """What went over the wire: each request the SDK sent and the response it got (headers only).

    Recorded with httpx event hooks on the httpx client handed to the SDK (its `httpx_client=`
    constructor parameter): observation only, the SDK builds and parses everything itself.
    """

    def __init__(self) -> None:
        self.exchanges: list[tuple[httpx.Request, httpx.Response]] = []

    def _record(self, response: httpx.Response) -> None:
        self.exchanges.append((response.request, response))

    async def _arecord(self, response: httpx.Response) -> None:
        self._record(response)

    def httpx_client(self, flavor: str) -> httpx.Client | httpx.AsyncClient:
        if flavor == "async":
            return httpx.AsyncClient(timeout=20, event_hooks={"response": [self._arecord]})
        return httpx.Client(timeout=20, event_hooks={"response": [self._record]})


@asynccontextmanager
async def sdk(api: str, flavor: str, base_url: str, wire: Wire | None = None) -> AsyncIterator[Any]:
    """A Cohere SDK client of the given API version ("v1", "v2") and flavor, pointed at base_url."""
    classes = {
        ("v1", "async"): cohere.AsyncClient,
        ("v1", "sync"): cohere.Client,
        ("v2", "async"): cohere.AsyncClientV2,
        ("v2", "sync"): cohere.ClientV2,
    }
    options: dict[str, Any] = {"timeout": 20}
    if wire is not None:
        options["httpx_client"] = wire.httpx_client(flavor)
    client = classes[api, flavor](api_key=SDK_KEY, base_url=base_url, **options)
    async with AsyncExitStack() as stack:
        if flavor == "async":
            await stack.enter_async_context(client)
        else:
            stack.enter_context(client)
        yield client


async def call(method: Any, **kwargs: Any) -> Any:
    """Await an async SDK method; run a sync one in a thread so the in-process servers keep serving."""
    if inspect.iscoroutinefunction(method):
        return await method(**kwargs)
    return await asyncio.to_thread(functools.partial(method, **kwargs))


def ranking(documents: Sequence[str], top_n: int | None, query: str = QUERY) -> list[int]:
    scores = [emulated_score(query, document) for document in documents]
    order = sorted(range(len(documents)), key=lambda index: scores[index], reverse=True)
    return order if top_n is None else order[:top_n]


def assert_ranked(results: Sequence[Any], documents: Sequence[str], top_n: int | None, query: str = QUERY) -> None:
    """The SDK parsed a correct ranking: right indices, scores of the right documents, best first, cut."""
    assert len(results) == (len(documents) if top_n is None else min(top_n, len(documents)))
    for item in results:
        assert isinstance(item.index, int) and not isinstance(item.index, bool)
        assert isinstance(item.relevance_score, float)
        assert item.relevance_score == pytest.approx(emulated_score(query, documents[item.index]), abs=1e-12)
    scores = [item.relevance_score for item in results]
    assert scores == sorted(scores, reverse=True)
    assert [item.index for item in results] == ranking(documents, top_n, query)


def assert_meta(meta: Any, api_version: str, fresh: bool = True) -> None:
    assert isinstance(meta, cohere.ApiMeta)
    assert meta.api_version is not None and meta.api_version.version == api_version
    assert meta.billed_units is not None and meta.billed_units.search_units == 1
    assert meta.tokens is not None
    assert meta.tokens.output_tokens == 0
    if fresh:
        assert meta.tokens.input_tokens is not None and meta.tokens.input_tokens > 0


def error_body(error: ApiError) -> dict[str, Any]:
    """The error's JSON body; some SDK versions (5.11) parse a 422 body into a model that keeps unknown keys."""
    body = error.body
    return body if isinstance(body, dict) else body.model_dump()


def sdk_has_parameter(method: Any, name: str) -> bool:
    return name in inspect.signature(method).parameters


# --- v2 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("flavor", FLAVORS)
async def test_v2_rerank(make_gateway: GatewayFactory, flavor: str, model: str):
    gateway = await make_gateway()
    async with sdk("v2", flavor, gateway_url(gateway)) as co:
        kwargs: dict[str, Any] = {"model": model, "query": QUERY, "documents": DOCUMENTS, "top_n": 3}
        # Cohere's v2 rerank had `return_documents` in SDK 5.x and dropped it later; use it when there.
        with_documents = sdk_has_parameter(co.rerank, "return_documents")
        if with_documents:
            kwargs["return_documents"] = True
        response = await call(co.rerank, **kwargs)

    assert isinstance(response, cohere.V2RerankResponse)
    assert_ranked(response.results, DOCUMENTS, top_n=3)
    if with_documents:
        # The SDK's v2 result model leaves `document` out (extra fields allowed): read what the wire carried.
        assert [item.document.text for item in response.results] == [  # type: ignore[attr-defined]
            DOCUMENTS[item.index] for item in response.results]
    assert isinstance(response.id, str) and response.id
    assert_meta(response.meta, "2")


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_v2_rerank_without_top_n_returns_every_document(make_gateway: GatewayFactory, flavor: str):
    gateway = await make_gateway()
    async with sdk("v2", flavor, gateway_url(gateway)) as co:
        response = await call(co.rerank, model=MODEL, query=QUERY, documents=DOCUMENTS)
    assert_ranked(response.results, DOCUMENTS, top_n=None)


async def test_v2_top_n_larger_than_documents(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    async with sdk("v2", "async", gateway_url(gateway)) as co:
        response = await co.rerank(model=MODEL, query=QUERY, documents=DOCUMENTS[:2], top_n=10)
    assert_ranked(response.results, DOCUMENTS[:2], top_n=10)


async def test_v2_optional_sdk_knobs_are_accepted(make_gateway: GatewayFactory):
    """Parameters the SDK (and LangChain's CohereRerank) may send must not make the gateway refuse."""
    gateway = await make_gateway()
    async with sdk("v2", "async", gateway_url(gateway)) as co:
        knobs = {name: value for name, value in {"max_tokens_per_doc": 4096, "priority": 0}.items()
                 if sdk_has_parameter(co.rerank, name)}
        response = await co.rerank(model=MODEL, query=QUERY, documents=DOCUMENTS, top_n=2, **knobs)
    assert_ranked(response.results, DOCUMENTS, top_n=2)


# --- v1 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("return_documents", [True, False])
@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("flavor", FLAVORS)
async def test_v1_rerank(make_gateway: GatewayFactory, flavor: str, model: str, return_documents: bool):
    gateway = await make_gateway()
    async with sdk("v1", flavor, gateway_url(gateway)) as co:
        response = await call(
            co.rerank, query=QUERY, documents=DOCUMENTS, top_n=2, model=model, return_documents=return_documents
        )

    assert isinstance(response, cohere.RerankResponse)
    assert_ranked(response.results, DOCUMENTS, top_n=2)
    if return_documents:
        assert [item.document and item.document.text for item in response.results] == [
            DOCUMENTS[item.index] for item in response.results]
    else:
        assert all(item.document is None for item in response.results)
    assert isinstance(response.id, str) and response.id
    assert_meta(response.meta, "1")


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_v1_text_objects_and_default_model(make_gateway: GatewayFactory, flavor: str):
    """v1 takes documents as {"text": ...} objects too, and `model` is optional there (default model)."""
    gateway = await make_gateway()
    wire = Wire()
    async with sdk("v1", flavor, gateway_url(gateway), wire) as co:
        response = await call(co.rerank, query=QUERY, documents=[{"text": d} for d in DOCUMENTS], top_n=4,
                              return_documents=True)
    [(request, answer)] = wire.exchanges
    assert "model" not in json.loads(request.content)
    assert answer.status_code == 200
    assert answer.headers["x-rerank-model"] == MODEL
    assert_ranked(response.results, DOCUMENTS, top_n=4)
    assert [item.document.text for item in response.results] == [DOCUMENTS[i] for i in ranking(DOCUMENTS, 4)]


async def test_repeated_call_is_served_from_cache(make_gateway: GatewayFactory):
    """The second identical call is scored from the cache; the SDK parses it the same way."""
    gateway = await make_gateway()
    wire = Wire()
    async with sdk("v2", "async", gateway_url(gateway), wire) as co:
        first = await co.rerank(model=MODEL, query=QUERY, documents=DOCUMENTS, top_n=3)
        second = await co.rerank(model=MODEL, query=QUERY, documents=DOCUMENTS, top_n=3)
    assert [answer.headers["x-rerank-provider"] for _, answer in wire.exchanges] == ["deepinfra", "cache"]
    assert second.results == first.results
    assert_ranked(second.results, DOCUMENTS, top_n=3)
    assert_meta(second.meta, "2", fresh=False)


# --- the wire ----------------------------------------------------------------------------------

@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_what_the_sdk_sends(make_gateway: GatewayFactory, api: str):
    gateway = await make_gateway()
    base = gateway_url(gateway)
    wire = Wire()
    async with sdk(api, "async", base, wire) as co:
        response = await co.rerank(model=MODEL, query=QUERY, documents=DOCUMENTS, top_n=1)
    [(request, answer)] = wire.exchanges
    assert request.method == "POST"
    assert str(request.url) == f"{base}/{api}/rerank"
    assert request.headers["authorization"] == f"Bearer {SDK_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-fern-sdk-name"] == "cohere"  # (7.x also sends User-Agent: cohere/<version>)
    assert json.loads(request.content) == {"model": MODEL, "query": QUERY, "documents": DOCUMENTS, "top_n": 1}
    # The gateway's own headers come back alongside the body the SDK parsed.
    assert answer.status_code == 200
    assert answer.headers["x-rerank-model"] == MODEL
    assert answer.headers["x-rerank-provider"] == "deepinfra"
    assert answer.headers["x-request-id"] == response.id
    assert_ranked(response.results, DOCUMENTS, top_n=1)


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("flavor", FLAVORS)
async def test_unknown_model_raises_not_found(make_gateway: GatewayFactory, api: str, flavor: str):
    gateway = await make_gateway()
    async with sdk(api, flavor, gateway_url(gateway)) as co:
        with pytest.raises(cohere.NotFoundError) as raised:
            await call(co.rerank, model="no-such-reranker", query=QUERY, documents=DOCUMENTS)
    error = raised.value
    assert isinstance(error, ApiError)
    assert error.status_code == 404
    body = error_body(error)["error"]
    assert body["type"] == "model_not_found"
    assert "no-such-reranker" in body["message"] and MODEL in body["message"]
    headers = getattr(error, "headers", None)
    if headers is not None:  # newer SDKs (5.21, 7.x) keep the answer's headers
        assert body["request_id"] == headers["x-request-id"]


async def test_invalid_request_raises_unprocessable(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    async with sdk("v2", "async", gateway_url(gateway)) as co:
        with pytest.raises(cohere.UnprocessableEntityError) as raised:
            await co.rerank(model=MODEL, query=QUERY, documents=[])
    assert raised.value.status_code == 422
    body = error_body(raised.value)["error"]
    assert body["type"] == "invalid_request"
    assert "documents" in body["message"]


# --- as ops run it: real processes, the sync clients ------------------------------------------

@pytest.mark.processes
@pytest.mark.slow
def test_sync_clients_against_the_gateway_process(tmp_path):
    emulator_port, gateway_port = free_port(), free_port()
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(emulator_port)))
    base = f"http://127.0.0.1:{gateway_port}"
    with running(["emulate", "--port", str(emulator_port), "--api-key", "process-key"], emulator_port), \
         running(["serve", "--config", str(config), "--port", str(gateway_port)], gateway_port,
                 env={"EMULATOR_KEY": "process-key"}):
        with cohere.ClientV2(api_key=SDK_KEY, base_url=base, timeout=20) as co:
            v2 = co.rerank(model="Qwen/Qwen3-Reranker-8B", query=QUERY, documents=DOCUMENTS, top_n=3)
        with cohere.Client(api_key=SDK_KEY, base_url=base, timeout=20) as co:
            v1 = co.rerank(query=QUERY, documents=DOCUMENTS, top_n=3, model=MODEL, return_documents=True)
            with pytest.raises(cohere.NotFoundError) as raised:
                co.rerank(query=QUERY, documents=DOCUMENTS, model="no-such-reranker")
    assert_ranked(v2.results, DOCUMENTS, top_n=3)
    assert_meta(v2.meta, "2")
    assert_ranked(v1.results, DOCUMENTS, top_n=3)
    assert [item.document.text for item in v1.results] == [DOCUMENTS[item.index] for item in v1.results]
    assert_meta(v1.meta, "1", fresh=False)
    assert raised.value.status_code == 404
    assert error_body(raised.value)["error"]["type"] == "model_not_found"
