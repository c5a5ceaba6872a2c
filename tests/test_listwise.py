"""List-wise models: one call per request whatever max_batch, cached per whole ordered list, one flight per identical request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from tests.support.cache_requests import DI, QUERY, documents
from tests.support.config import gateway_config, local_url
from tests.support.gateway import MODEL, GatewayFactory, add_fault


def listwise(provider: str, **model: Any) -> dict[str, Any]:
    return {"models": {MODEL: {"listwise": True, **model}}, "providers": {provider: {"max_batch": 10}}}


async def stats(emulator) -> dict[str, Any]:
    return await (await emulator.get("/_emulator/stats")).json()


async def rerank(gateway, docs: list[str]) -> Any:
    return await gateway.post(DI, json={"queries": [QUERY], "documents": docs})


@pytest.mark.parametrize("provider", ["deepinfra", "fireworks"])
async def test_thirty_documents_go_out_in_one_call_and_come_back_as_one_answer(
    make_gateway: GatewayFactory, emulator, provider: str,
):
    gateway = await make_gateway(fallback=[provider], **listwise(provider))
    docs = documents("list", 30)
    first = await rerank(gateway, docs)
    assert first.status == 200, await first.text()
    assert first.headers["X-Rerank-Cache"] == "hits=0; misses=30"
    sent = await stats(emulator)
    assert sent["requests"][provider] == 1 and sent["documents"][provider] == 30

    again = await rerank(gateway, docs)
    assert again.headers["X-Rerank-Cache"] == "hits=30; misses=0"
    assert (await again.json())["scores"] == (await first.json())["scores"]

    reordered = await rerank(gateway, docs[::-1])
    assert reordered.headers["X-Rerank-Cache"] == "hits=0; misses=30"
    sent = await stats(emulator)
    assert sent["requests"][provider] == 2 and sent["documents"][provider] == 60


async def test_a_part_of_a_scored_list_is_another_list(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(fallback=["deepinfra"], **listwise("deepinfra"))
    docs = documents("part", 20)
    await rerank(gateway, docs)
    part = await rerank(gateway, docs[:10])
    assert part.headers["X-Rerank-Cache"] == "hits=0; misses=10"  # never the scores those ten had among twenty
    repeated = await rerank(gateway, [docs[0], docs[1], docs[0]])
    assert repeated.headers["X-Rerank-Cache"] == "hits=0; misses=3"  # each position its own: the model saw three
    assert (await stats(emulator))["documents"]["deepinfra"] == 33


async def test_identical_concurrent_requests_share_one_flight(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "slow", delay_ms=300, count=1)
    gateway = await make_gateway(fallback=["deepinfra"], **listwise("deepinfra"))
    docs = documents("flight", 30)
    responses = await asyncio.gather(*[rerank(gateway, docs) for _ in range(6)])
    assert {response.status for response in responses} == {200}
    assert len({tuple((await response.json())["scores"]) for response in responses}) == 1
    assert (await stats(emulator))["requests"]["deepinfra"] == 1


async def test_a_list_over_its_limit_or_of_several_queries_is_refused(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(fallback=["deepinfra"], **listwise("deepinfra", max_list_documents=25))
    over = await rerank(gateway, documents("over", 30))
    assert over.status == 413
    assert "max_list_documents = 25" in (await over.json())["error"]["message"]
    several = await gateway.post(DI, json={"queries": ["one", "two"], "documents": ["a", "b"]})
    assert several.status == 422 and "list-wise" in (await several.json())["error"]["message"]
    assert (await stats(emulator))["requests"]["deepinfra"] == 0


async def test_the_pair_wise_model_still_splits_at_max_batch(make_gateway: GatewayFactory, emulator):
    gateway = await make_gateway(fallback=["deepinfra"], providers={"deepinfra": {"max_batch": 10}})
    assert (await rerank(gateway, documents("pairs", 30))).status == 200
    assert (await stats(emulator))["requests"]["deepinfra"] == 3


def test_a_listwise_model_cannot_chunk():
    raw = gateway_config(local_url(9), models={MODEL: {"listwise": True, "long_documents": "chunk"}})
    with pytest.raises(ConfigError, match="cannot serve a listwise model"):
        parse_config(raw)


async def test_gateways_sharing_redis_share_a_list_and_its_flight(make_gateway: GatewayFactory, emulator, redis_url):
    await add_fault(emulator, "deepinfra", "slow", delay_ms=300, count=1)
    first, second = [await make_gateway(fallback=["deepinfra"], cache={"url": redis_url}, **listwise("deepinfra"))
                     for _ in range(2)]
    docs = documents("shared-list", 30)
    answers = await asyncio.gather(rerank(first, docs), rerank(second, docs))
    assert len({tuple((await answer.json())["scores"]) for answer in answers}) == 1
    assert (await stats(emulator))["requests"]["deepinfra"] == 1
    reordered = await rerank(second, docs[::-1])
    assert reordered.headers["X-Rerank-Cache"] == "hits=0; misses=30"
