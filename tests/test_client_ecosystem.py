"""LiteLLM's rerank routes and the client libraries' default model names, over real sockets.

Each client is used the way its docs tell users to point it elsewhere, with nothing else changed
(issue 18 item 1): LiteLLM's `infinity/` with `api_base = <gateway>/infinity`, `deepinfra/` with the
gateway root (DeepInfra's own base URL convention: LiteLLM posts to `/inference/{model}`),
`hosted_vllm/` with the gateway root (`/rerank`, which must keep vLLM's answer shape). Client
default model names (LlamaIndex `rerank-english-v3.0`, Haystack and the Cohere SDK `rerank-v3.5`)
404 unless ops route them: an alias, or the catch-all `aliases = ["*"]`.

LlamaIndex's and Haystack's Cohere rerankers run with their default models too. Haystack's
(cohere-haystack, in the `test` extra) accepts the Cohere SDK 7 of the main venv. LlamaIndex's
(llama-index-postprocessor-cohere-rerank 0.10.0, its newest) requires `cohere<7`, which would change
the SDK every other client test runs against, so it lives in a second venv, `.venv-clients`
(tests/clients/requirements.txt, made by .ci/run): its python runs tests/clients/llamaindex_rerank.py
against the gateway this test started, and the test checks what it printed. Without that venv the
test skips saying how to make it; in CI it fails instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import cohere
import pytest
from cohere.core.api_error import ApiError

from gateway.emulator import emulated_score
from gateway.observability.logs import REQUEST_LOGGER
from tests.support.gateway import MODEL, GatewayFactory
from tests.support.processes import REPO

# LiteLLM's types trip a pydantic warning as they are first used (its code, not the gateway's).
pytestmark = [pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning"), pytest.mark.clients]

QUERY = "how much does bankruptcy through the MFC cost?"
DOCUMENTS = [
    "The MFC in Kazan opens at 8:00.",
    "Out-of-court bankruptcy through the MFC is free.",
    "Bankruptcy through a court costs about 25,000 rubles.",
    "Weather in Kazan is mild in May.",
]
KEY = "any-key-the-gateway-ignores"


@pytest.fixture(scope="module")
def litellm() -> Any:
    """LiteLLM, imported by the tests that use it: its import takes ~3 s, which runs that leave
    these tests out (`pytest --fast`) should not pay at collection."""
    # It fetches its model price map from the network at import unless told to use its bundled copy.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return litellm


def base_url(gateway: Any) -> str:
    return str(gateway.make_url("")).rstrip("/")


def best_first(top_n: int) -> list[int]:
    scores = [emulated_score(QUERY, document) for document in DOCUMENTS]
    return sorted(range(len(DOCUMENTS)), key=lambda index: scores[index], reverse=True)[:top_n]


def with_catch_all(raw: dict[str, Any]) -> None:
    raw["models"][MODEL]["aliases"].append("*")


def assert_litellm_ranked(response: Any, top_n: int, with_documents: bool) -> None:
    results = response.results
    assert [item["index"] for item in results] == best_first(top_n)
    for item in results:
        assert item["relevance_score"] == pytest.approx(emulated_score(QUERY, DOCUMENTS[item["index"]]), abs=1e-12)
        if with_documents:
            assert item["document"]["text"] == DOCUMENTS[item["index"]]


# --- LiteLLM ---------------------------------------------------------------------------------

async def test_litellm_infinity_route_with_documents(make_gateway: GatewayFactory, litellm: Any):
    gateway = await make_gateway()
    response = await litellm.arerank(
        model=f"infinity/{MODEL}", api_base=f"{base_url(gateway)}/infinity", api_key=KEY,
        query=QUERY, documents=DOCUMENTS, top_n=3, return_documents=True,
    )
    assert_litellm_ranked(response, 3, with_documents=True)
    assert response.meta["tokens"]["input_tokens"] > 0


async def test_infinity_answers_in_infinitys_shape(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    response = await gateway.post("/infinity/rerank", json={
        "model": MODEL, "query": QUERY, "documents": DOCUMENTS, "return_documents": True, "top_n": 2})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["object"] == "rerank" and body["model"] == MODEL
    assert body["id"] == response.headers["X-Request-ID"] and isinstance(body["created"], int)
    assert [item["document"] for item in body["results"]] == [DOCUMENTS[i] for i in best_first(2)]
    raw = await (await gateway.post("/infinity/rerank", json={
        "model": MODEL, "query": QUERY, "documents": DOCUMENTS, "raw_scores": True})).json()
    # Logits: same order, outside [0, 1] for a confident model.
    assert [item["index"] for item in raw["results"]] == best_first(len(DOCUMENTS))
    assert any(not 0 <= item["relevance_score"] <= 1 for item in raw["results"])


async def test_litellm_hosted_vllm_keeps_the_object_document_on_rerank(make_gateway: GatewayFactory, litellm: Any):
    """vLLM's clients send the very bytes Infinity's do to `/rerank`; its answer shape stays."""
    gateway = await make_gateway()
    response = await litellm.arerank(
        model=f"hosted_vllm/{MODEL}", api_base=base_url(gateway), api_key=KEY,
        query=QUERY, documents=DOCUMENTS, top_n=2, return_documents=True,
    )
    assert_litellm_ranked(response, 2, with_documents=True)


class RequestRecorder:
    """A bare HTTP/1.1 server that keeps each request's bytes (head and body) and answers one result."""

    ANSWER = b'{"results": [{"index": 0, "relevance_score": 0.5}]}'

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        self.requests.append(head + await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                     % len(self.ANSWER) + self.ANSWER)
        await writer.drain()
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("options", [{}, {"top_n": 3, "return_documents": True}, {"rank_fields": ["text"]}])
async def test_litellm_infinity_and_hosted_vllm_send_the_same_bytes(options: dict[str, Any], litellm: Any):
    """Why Infinity has a prefix, not a guess at `/rerank`: no byte of the request tells the two apart."""
    recorder = RequestRecorder()
    server = await asyncio.start_server(recorder, "127.0.0.1", 0)
    async with server:
        api_base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        for route in ("infinity", "hosted_vllm"):
            await litellm.arerank(model=f"{route}/{MODEL}", api_base=api_base, api_key=KEY,
                                  query=QUERY, documents=DOCUMENTS, **options)
    infinity, hosted_vllm = recorder.requests
    assert infinity.startswith(b"POST /rerank HTTP/1.1\r\n") and b"user-agent: litellm/" in infinity
    assert infinity == hosted_vllm


async def test_no_one_document_shape_at_rerank_satisfies_both_litellm_parsers(make_gateway: GatewayFactory, litellm: Any):
    """Why `/rerank` cannot answer both: each LiteLLM parser rejects the other's `document`.

    litellm/llms/infinity/rerank/transformation.py puts the value in `RerankResponseDocument(text=...)`
    as it is (an object fails `text: str`); hosted_vllm's calls `.get("text")` on it (a string has no
    `.get`). Should either start to take both, `/rerank` could serve Infinity's clients too.
    """
    gateway = await make_gateway()
    call = {"query": QUERY, "documents": DOCUMENTS, "api_key": KEY, "return_documents": True}
    with pytest.raises(litellm.exceptions.APIConnectionError, match=r"results\.0\.document\.text\s+Input should be a valid string"):
        await litellm.arerank(model=f"infinity/{MODEL}", api_base=base_url(gateway), **call)
    with pytest.raises(litellm.exceptions.APIConnectionError, match="'str' object has no attribute 'get'"):
        await litellm.arerank(model=f"hosted_vllm/{MODEL}", api_base=f"{base_url(gateway)}/infinity", **call)
    # Without documents the two shapes agree, so the same scores come back from both paths.
    for route, api_base in (("infinity", base_url(gateway)), ("hosted_vllm", f"{base_url(gateway)}/infinity")):
        response = await litellm.arerank(model=f"{route}/{MODEL}", api_base=api_base, api_key=KEY,
                                         query=QUERY, documents=DOCUMENTS, top_n=2)
        assert_litellm_ranked(response, 2, with_documents=False)


async def test_litellm_deepinfra_route_with_the_gateway_root(make_gateway: GatewayFactory, litellm: Any):
    gateway = await make_gateway()
    response = await litellm.arerank(
        model="deepinfra/Qwen/Qwen3-Reranker-8B", api_base=base_url(gateway), api_key=KEY,
        query=QUERY, documents=DOCUMENTS,
    )
    # DeepInfra's format has no ranking: LiteLLM lists every document's score in request order.
    assert [item["index"] for item in response.results] == list(range(len(DOCUMENTS)))
    assert [item["relevance_score"] for item in response.results] == [
        pytest.approx(emulated_score(QUERY, document), abs=1e-12) for document in DOCUMENTS]


async def test_deepinfra_root_path_keeps_fireworks_path(make_gateway: GatewayFactory):
    """`/inference/{model}` must not swallow Fireworks' `/inference/v1/rerank`."""
    gateway = await make_gateway()
    fireworks = await gateway.post("/inference/v1/rerank", json={"model": MODEL, "query": QUERY, "documents": DOCUMENTS})
    assert fireworks.status == 200 and "data" in await fireworks.json()
    deepinfra = await gateway.post(f"/inference/{MODEL}", json={"queries": [QUERY], "documents": DOCUMENTS})
    assert deepinfra.status == 200
    assert (await deepinfra.json())["scores"] == [pytest.approx(emulated_score(QUERY, d), abs=1e-12) for d in DOCUMENTS]


async def test_litellm_cohere_route_with_its_default_model_name(make_gateway: GatewayFactory, litellm: Any):
    gateway = await make_gateway(edit=with_catch_all)
    response = await litellm.arerank(
        model="cohere/rerank-v3.5", api_base=base_url(gateway), api_key=KEY, query=QUERY, documents=DOCUMENTS, top_n=2,
    )
    assert_litellm_ranked(response, 2, with_documents=False)


# --- client default model names ---------------------------------------------------------------

async def test_a_client_default_name_is_a_404_unless_ops_route_it(make_gateway: GatewayFactory):
    gateway = await make_gateway()
    async with cohere.AsyncClientV2(api_key=KEY, base_url=base_url(gateway)) as co:
        with pytest.raises(ApiError) as refused:
            await co.rerank(model="rerank-v3.5", query=QUERY, documents=DOCUMENTS)
    assert refused.value.status_code == 404


async def test_an_alias_routes_one_client_default(make_gateway: GatewayFactory):
    gateway = await make_gateway(edit=lambda raw: raw["models"][MODEL]["aliases"].append("rerank-english-v3.0"))
    async with cohere.AsyncClientV2(api_key=KEY, base_url=base_url(gateway)) as co:
        served = await co.rerank(model="rerank-english-v3.0", query=QUERY, documents=DOCUMENTS, top_n=1)
        assert [item.index for item in served.results] == best_first(1)
        with pytest.raises(ApiError) as refused:
            await co.rerank(model="rerank-v3.5", query=QUERY, documents=DOCUMENTS)
    assert refused.value.status_code == 404


@pytest.mark.parametrize("name", ["rerank-v3.5", "rerank-english-v3.0"])
async def test_the_catch_all_routes_any_name_and_logs_what_was_sent(make_gateway: GatewayFactory, caplog, name: str):
    gateway = await make_gateway(edit=with_catch_all)
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        async with cohere.AsyncClientV2(api_key=KEY, base_url=base_url(gateway)) as co:
            response = await co.rerank(model=name, query=QUERY, documents=DOCUMENTS, top_n=2)
    assert [item.index for item in response.results] == best_first(2)
    fields = next(r for r in caplog.records if r.getMessage() == "rerank").vetted_fields
    assert fields["model"] == MODEL and fields["requested_model"] == name


async def test_a_named_model_wins_over_the_catch_all(make_gateway: GatewayFactory, caplog):
    gateway = await make_gateway(edit=with_catch_all)
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        response = await gateway.post("/v1/rerank", json={"model": MODEL, "query": QUERY, "documents": DOCUMENTS})
    assert response.status == 200 and response.headers["X-Rerank-Model"] == MODEL
    fields = next(r for r in caplog.records if r.getMessage() == "rerank").vetted_fields
    assert "requested_model" not in fields


# --- LlamaIndex (in .venv-clients) and Haystack --------------------------------------------

CLIENTS_VENV = REPO / ".venv-clients"
MAKE_CLIENTS_VENV = (
    "python3 -m venv --without-pip .venv-clients && "
    ".venv/bin/pip --python .venv-clients/bin/python install -q --no-compile -r tests/clients/requirements.txt"
)
# Bounds a hung client (LlamaIndex's import alone takes seconds on a busy machine); not a timing claim.
CLIENT_SECONDS = 120


def clients_python() -> Path:
    python = CLIENTS_VENV / "bin" / "python"
    if not python.exists():
        reason = f"{CLIENTS_VENV} is absent (LlamaIndex's Cohere reranker needs cohere<7); make it: {MAKE_CLIENTS_VENV}"
        if os.environ.get("CI"):
            pytest.fail(f"CI makes it (.ci/run): {reason}")
        pytest.skip(reason)
    return python


async def run_client(script: str, call: dict[str, Any]) -> Any:
    """Runs tests/clients/<script> with .venv-clients' python, `call` on stdin; returns its JSON output."""
    client = await asyncio.create_subprocess_exec(
        clients_python(), str(REPO / "tests" / "clients" / script),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )
    try:
        out, err = await asyncio.wait_for(client.communicate(json.dumps(call).encode()), CLIENT_SECONDS)
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
    assert client.returncode == 0, err.decode(errors="replace")
    return json.loads(out)


def assert_scored_best_first(ranked: list[tuple[int, float | None]], top_n: int) -> None:
    assert [index for index, _ in ranked] == best_first(top_n)
    assert [score for _, score in ranked] == [
        pytest.approx(emulated_score(QUERY, DOCUMENTS[index]), abs=1e-12) for index, _ in ranked]


@pytest.mark.processes
@pytest.mark.slow
async def test_llamaindex_cohere_rerank_with_its_default_model(make_gateway: GatewayFactory):
    clients_python()  # skips (fails in CI) before a gateway is built for nothing
    gateway = await make_gateway(edit=with_catch_all)
    ranked = await run_client("llamaindex_rerank.py", {
        "base_url": base_url(gateway), "api_key": KEY, "query": QUERY, "documents": DOCUMENTS, "top_n": 2})
    assert_scored_best_first([(item["index"], item["score"]) for item in ranked], 2)


async def test_haystack_cohere_ranker_with_its_default_model(make_gateway: GatewayFactory, monkeypatch):
    # Haystack reads this as it is imported: its telemetry never starts (it would post to posthog).
    monkeypatch.setenv("HAYSTACK_TELEMETRY_ENABLED", "False")
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.cohere import CohereRanker

    gateway = await make_gateway(edit=with_catch_all)
    ranker = CohereRanker(api_key=Secret.from_token(KEY), api_base_url=base_url(gateway), top_k=2)  # model: its default
    documents = [Document(id=str(index), content=document) for index, document in enumerate(DOCUMENTS)]
    result = await asyncio.to_thread(ranker.run, query=QUERY, documents=documents)
    assert_scored_best_first([(int(document.id), document.score) for document in result["documents"]], 2)


def test_a_star_inside_an_alias_is_refused_not_taken_as_a_pattern():
    from gateway.config import ConfigError, parse_config
    from tests.support.config import gateway_config

    raw = gateway_config("http://127.0.0.1:9", ["deepinfra"])
    raw["models"][MODEL]["aliases"].append("rerank-*")
    with pytest.raises(ConfigError, match=r"'rerank-\*': names are matched whole"):
        parse_config(raw)
