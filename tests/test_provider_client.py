"""ProviderClient with a fake transport: the HTTP edges (statuses, timeouts, bad bodies, batching) without sockets.

The emulator tests (test_gateway.py, test_wire.py) cover the real wire formats over a socket; these
inject the client's `post` and script what the "network" answers, so each edge is one small case.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.config import ProviderConfig
from gateway.errors import ProviderFailure
from gateway.models import AnsweredCall, Batch
from gateway.providers.client import ProviderClient
from gateway.providers.http_errors import Refused

KEY = "sk-secret-key"


@dataclass
class Sent:
    url: str
    body: Any
    headers: Mapping[str, str]
    timeout: aiohttp.ClientTimeout


Answer = tuple[int, bytes, str | None]


@dataclass
class FakeProvider:
    """The client's transport: records every request and answers with `answer(request)`."""

    answer: Callable[[Sent], Answer]
    sent: list[Sent] = field(default_factory=list)

    async def __call__(self, url: str, body: bytes, headers: Mapping[str, str], timeout: aiohttp.ClientTimeout) -> Answer:
        request = Sent(url, orjson.loads(body), dict(headers), timeout)
        self.sent.append(request)
        return self.answer(request)


def ok(payload: Any) -> Callable[[Sent], Answer]:
    return lambda _: (200, orjson.dumps(payload), None)


def deepinfra_scores(request: Sent) -> Answer:
    """DeepInfra's answer: one score per document (its length, so each is told apart), 10 tokens a pair."""
    documents = request.body["documents"]
    return 200, orjson.dumps({"scores": [len(d) / 100 for d in documents], "input_tokens": 10 * len(documents)}), None


def cohere_scores(request: Sent) -> Answer:
    """Cohere's answer, best first as Cohere sorts it: the client must put the scores back in input order."""
    documents = request.body["documents"]
    results = [{"index": i, "relevance_score": len(d) / 100} for i, d in enumerate(documents)]
    return 200, orjson.dumps({"results": sorted(results, key=lambda r: -r["relevance_score"])}), None


def provider(kind: str = "deepinfra", **overrides: Any) -> ProviderConfig:
    models = {"deepinfra": "Qwen/Qwen3-Reranker-8B", "cohere": "rerank-v3.5"}
    return ProviderConfig.model_validate({
        "kind": kind, "base_url": "https://api.example.test", "model": models[kind], "api_key_env": "KEY", **overrides,
    })


def client(fake: FakeProvider, config: ProviderConfig | None = None, api_key: str | None = KEY) -> ProviderClient:
    return ProviderClient("upstream", config or provider(), api_key, post=fake)


def pairs(query: str, *documents: str, instruction: str | None = None) -> Batch:
    return Batch([query] * len(documents), list(documents), instruction)


async def failure_of(call: ProviderClient, batch: Batch | None = None) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as caught:
        await call.score(batch or pairs("q", "a", "bb"))
    return caught.value


async def test_the_request_goes_to_the_kinds_path_with_the_key_body_and_timeouts():
    fake = FakeProvider(deepinfra_scores)
    config = provider(timeout_seconds=3.5, connect_timeout_seconds=0.5)
    scores, _ = await client(fake, config).score(pairs("what does it cost?", "free", "25,000 rubles", instruction="be brief"))
    assert scores == [0.04, 0.13]
    [sent] = fake.sent
    assert sent.url == "https://api.example.test/v1/inference/Qwen/Qwen3-Reranker-8B"
    assert sent.body == {"queries": ["what does it cost?"] * 2, "documents": ["free", "25,000 rubles"], "instruction": "be brief"}
    assert sent.headers["Authorization"] == f"Bearer {KEY}" and sent.headers["Content-Type"] == "application/json"
    assert (sent.timeout.total, sent.timeout.sock_connect) == (3.5, 0.5)


async def test_a_configured_path_replaces_the_default_and_no_key_sends_no_authorization():
    fake = FakeProvider(deepinfra_scores)
    await client(fake, provider(path="/custom/rerank", api_key_env=None), api_key=None).score(pairs("q", "a"))
    assert fake.sent[0].url == "https://api.example.test/custom/rerank"
    assert "Authorization" not in fake.sent[0].headers


async def test_an_injected_transport_opens_no_connection():
    call = client(FakeProvider(deepinfra_scores))
    await call.start()
    assert call._transport is None  # no pool, no sockets: the fake is the whole network
    await call.score(pairs("q", "a"))
    await call.close()


async def test_a_large_multi_query_batch_is_split_and_merged_back_in_input_order():
    fake = FakeProvider(deepinfra_scores)
    documents = [f"d{'x' * i}" for i in range(5)]
    batch = Batch(["q1", "q2", "q1", "q2", "q1"], documents, None)
    scores, usage = await client(fake, provider(max_batch=2)).score(batch)
    assert [len(s.body["documents"]) for s in fake.sent] == [2, 2, 1]
    assert scores == [len(d) / 100 for d in documents]
    assert usage.tokens == 50  # every call's reported tokens, summed


async def test_a_one_query_kind_gets_one_call_per_query_and_scores_return_to_their_positions():
    fake = FakeProvider(cohere_scores)
    batch = Batch(["q1", "q2", "q1", "q2"], ["a", "bbbb", "cc", "ddd"], None)
    scores, _ = await client(fake, provider("cohere")).score(batch)
    assert sorted((s.body["query"], tuple(s.body["documents"])) for s in fake.sent) == [("q1", ("a", "cc")), ("q2", ("bbbb", "ddd"))]
    assert scores == [0.01, 0.04, 0.02, 0.03]


async def test_reported_cost_is_taken_and_tokens_are_priced_otherwise():
    reported = {"scores": [0.5], "input_tokens": 40, "inference_status": {"cost": 0.002}}
    _, usage = await client(FakeProvider(ok(reported))).score(pairs("q", "a"))
    assert (usage.tokens, usage.cost_usd) == (40, 0.002)
    priced = {"scores": [0.5], "input_tokens": 40}
    _, usage = await client(FakeProvider(ok(priced)), provider(price_per_million_tokens=50.0)).score(pairs("q", "a"))
    assert usage.cost_usd == pytest.approx(40 * 50.0 / 1e6)


async def test_sigmoid_turns_logits_into_relevance():
    fake = FakeProvider(ok({"scores": [0.0, 100.0, -100.0]}))
    scores, _ = await client(fake, provider(score_transform="sigmoid")).score(pairs("q", "a", "b", "c"))
    assert scores[0] == 0.5 and scores[1] == pytest.approx(1.0) and scores[2] == pytest.approx(0.0, abs=1e-40)


@pytest.mark.parametrize(("payload", "reason"), [
    ({"scores": [0.5, 1.5]}, "score 1.5 is outside [0, 1]"),
    ({"scores": [0.5]}, "1 scores for 2 documents"),
    ({"detail": "no scores here"}, "no 'scores' list"),
])
async def test_a_200_without_a_full_valid_set_of_scores_is_an_invalid_answer(payload, reason):
    failure = await failure_of(client(FakeProvider(ok(payload))))
    assert failure.kind == "invalid_answer" and reason in failure.reason and failure.fallback_allowed


async def test_a_body_that_is_not_json_is_an_invalid_answer():
    failure = await failure_of(client(FakeProvider(lambda _: (200, b"<html>502 Bad Gateway</html>", None))))
    assert (failure.kind, failure.reason) == ("invalid_answer", "invalid answer: not JSON")


@pytest.mark.parametrize(("status", "kind", "transient", "fallback_allowed"), [
    (429, "http_429", True, True),
    (500, "http_5xx", False, True),
    (503, "http_5xx", True, True),
    (401, "http_4xx", False, True),  # our key is wrong there: another provider may still serve
    (400, "http_4xx", False, False),  # the request itself is wrong: every provider would say so
    (422, "http_4xx", False, False),
])
async def test_each_error_status_says_whether_to_retry_and_whether_to_fall_back(status, kind, transient, fallback_allowed):
    fake = FakeProvider(lambda _: (status, b'{"error": {"message": "nope"}}', "7"))
    failure = await failure_of(client(fake))
    assert (failure.kind, failure.transient, failure.fallback_allowed) == (kind, transient, fallback_allowed)
    assert failure.reason == f"HTTP {status}: nope" and failure.retry_after == "7"


@pytest.mark.parametrize(("body", "text"), [
    (b'{"detail": {"error": "model busy"}}', "model busy"),
    (b'{"message": "invalid api token"}', "invalid api token"),
    (b'{"error": "overloaded", "error_type": "Overloaded"}', "overloaded"),
    (b"", "(empty body)"),
    (b"upstream connect error " + b"x" * 1000, "upstream connect error " + "x" * 277),
])
async def test_the_providers_own_error_message_is_kept_short(body, text):
    failure = await failure_of(client(FakeProvider(lambda _: (502, body, None))))
    assert failure.reason == f"HTTP 502: {text}"


async def test_an_error_echoing_the_key_never_shows_it():
    fake = FakeProvider(lambda _: (401, f'{{"message": "bad key {KEY}"}}'.encode(), None))
    failure = await failure_of(client(fake))
    assert KEY not in str(failure) and failure.reason == "HTTP 401: bad key ***"


async def test_a_timeout_and_a_lost_connection_are_told_apart():
    async def times_out(*_: Any) -> Answer:
        raise TimeoutError

    async def refuses(*_: Any) -> Answer:
        raise Refused("api.example.test:443 refused the connection")

    timed_out = await failure_of(ProviderClient("upstream", provider(timeout_seconds=2.5), KEY, post=times_out))
    assert (timed_out.kind, timed_out.reason, timed_out.transient) == (
        "timeout", "timed out after 2.5s (timeout_seconds)", False)
    refused = await failure_of(ProviderClient("upstream", provider(), KEY, post=refuses))
    assert (refused.kind, refused.reason, refused.transient) == (
        "refused", "refused: api.example.test:443 refused the connection", True)


async def test_one_failed_call_of_a_split_batch_lets_its_siblings_answer_and_keeps_them():
    """A sibling of a failed call is paid for either way: it runs to its answer, which is kept
    (and cached by the service); then the first failure is raised."""
    async def first_fails_second_answers_later(url: str, body: bytes, headers: Mapping[str, str], timeout: Any) -> Answer:
        documents = orjson.loads(body)["documents"]
        if documents == ["a"]:
            return 500, b"boom", None
        await asyncio.sleep(0)  # answers after the failure was seen
        return 200, orjson.dumps({"scores": [0.25] * len(documents), "input_tokens": 3}), None

    call = ProviderClient("upstream", provider(max_batch=1), KEY, post=first_fails_second_answers_later)
    answered: list[AnsweredCall] = []
    with pytest.raises(ProviderFailure) as caught:
        await asyncio.wait_for(call.score(pairs("q", "a", "b"), answered), 5)
    assert caught.value.reason == "HTTP 500: boom"
    assert [(list(c.slots), c.scores, c.usage.tokens) for c in answered] == [([1], [0.25], 3)]
