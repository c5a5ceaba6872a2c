"""The score cache in the request path: single flight, Redis shared by gateways, Redis failures."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from gateway.cache.redis import redis_key
from gateway.config import GatewayConfig
from gateway.quality.groups import scoring_identity
from gateway.web.edge import LIVE
from tests.support.cache_requests import DI, QUERY, documents, expected
from tests.support.config import gateway_config, local_url, write_config
from tests.support.gateway import MODEL, GatewayFactory, add_fault, emulator_requests
from tests.support.polling import eventually
from tests.support.processes import free_port, running
from tests.support.redis_server import RedisServer, own_redis_server


async def test_concurrent_identical_requests_share_one_upstream_call(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "slow", delay_ms=300, count=1)
    gateway = await make_gateway(fallback=["deepinfra"])
    docs = documents("flight")
    responses = await asyncio.gather(*[gateway.post(DI, json={"queries": [QUERY], "documents": docs}) for _ in range(16)])
    for response in responses:
        assert response.status == 200
        assert (await response.json())["scores"] == pytest.approx(expected(docs), abs=1e-12)
    assert (await emulator_requests(emulator))["deepinfra"] == 1
    assert sorted(r.headers["X-Rerank-Cache"] for r in responses).count("hits=0; misses=20") == 1


async def test_overlapping_concurrent_requests_send_each_pair_once(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "slow", delay_ms=200, count=1)
    gateway = await make_gateway(fallback=["deepinfra"])
    docs = documents("overlap", 30)
    windows = [docs[0:20], docs[5:25], docs[10:30]]
    responses = await asyncio.gather(*[gateway.post(DI, json={"queries": [QUERY], "documents": w}) for w in windows])
    for window, response in zip(windows, responses):
        assert (await response.json())["scores"] == pytest.approx(expected(window), abs=1e-12)
    stats = await (await emulator.get("/_emulator/stats")).json()
    assert stats["documents"]["deepinfra"] == 30


async def test_a_failed_owner_does_not_fail_the_requests_waiting_on_it(make_gateway: GatewayFactory, emulator):
    def quick_timeout(raw: dict[str, Any]) -> None:
        raw["providers"]["deepinfra"]["timeout_seconds"] = 0.5

    await add_fault(emulator, "deepinfra", "hang", count=1)
    gateway = await make_gateway(fallback=["deepinfra"], edit=quick_timeout)
    docs = documents("orphan", 5)
    owner = asyncio.ensure_future(gateway.post(DI, json={"queries": [QUERY], "documents": docs}))
    async def owner_hanging_upstream() -> bool:
        return (await emulator_requests(emulator)).get("deepinfra", 0) > 0

    await eventually(owner_hanging_upstream, what="the owner's call reaching the provider")
    waiters = [gateway.post(DI, json={"queries": [QUERY], "documents": docs}) for _ in range(3)]
    responses = await asyncio.gather(owner, *waiters)
    assert responses[0].status == 504
    for response in responses[1:]:
        assert response.status == 200
        assert (await response.json())["scores"] == pytest.approx(expected(docs), abs=1e-12)


async def test_models_never_share_scores_through_the_gateway(make_gateway: GatewayFactory, emulator):
    def second_model(raw: dict[str, Any]) -> None:
        raw["models"]["bge-reranker"] = {"fallback": ["tei"]}

    gateway = await make_gateway(fallback=["deepinfra"], edit=second_model)
    docs = documents("models", 4)
    first = await gateway.post("/v1/rerank", json={"model": MODEL, "query": QUERY, "documents": docs})
    assert first.headers["X-Rerank-Provider"] == "deepinfra"
    other = await gateway.post("/v1/rerank", json={"model": "bge-reranker", "query": QUERY, "documents": docs})
    assert other.headers["X-Rerank-Provider"] == "tei"
    assert other.headers["X-Rerank-Cache"] == "hits=0; misses=4"


async def test_redis_cache_is_shared_between_gateways(make_gateway: GatewayFactory, emulator, redis_url):
    first = await make_gateway(cache={"url": redis_url})
    second = await make_gateway(cache={"url": redis_url})
    docs = documents("shared")
    response = await first.post(DI, json={"queries": [QUERY], "documents": docs[:12]})
    assert response.headers["X-Rerank-Cache"] == "hits=0; misses=12"
    response = await second.post(DI, json={"queries": [QUERY], "documents": docs})
    assert response.headers["X-Rerank-Cache"] == "hits=12; misses=8"
    assert (await response.json())["scores"] == pytest.approx(expected(docs), abs=1e-12)
    stats = await (await emulator.get("/_emulator/stats")).json()
    assert stats["documents"]["deepinfra"] == 20


@pytest.mark.processes
@pytest.mark.slow
async def test_two_gateway_processes_share_one_redis(tmp_path, redis_url):
    emulator_port, gateway_ports = free_port(), (free_port(), free_port())
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(emulator_port)))
    env = {"EMULATOR_KEY": "k", "REDIS_URL": redis_url}
    docs = documents("processes")
    body = {"queries": [QUERY], "passages": docs}
    with running(["emulate", "--port", str(emulator_port)], emulator_port), \
         running(["serve", "--config", str(config), "--port", str(gateway_ports[0]), "--workers", "1"], gateway_ports[0], env=env), \
         running(["serve", "--config", str(config), "--port", str(gateway_ports[1]), "--workers", "1"], gateway_ports[1], env=env):
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{gateway_ports[0]}{DI}", json=body) as response:
                assert response.headers["X-Rerank-Provider"] == "deepinfra"
            async with session.post(f"http://127.0.0.1:{gateway_ports[1]}{DI}", json=body) as response:
                assert response.headers["X-Rerank-Provider"] == "cache"
                assert (await response.json())["scores"] == pytest.approx(expected(docs), abs=1e-12)
            async with session.get(f"http://127.0.0.1:{emulator_port}/_emulator/stats") as response:
                assert (await response.json())["requests"]["deepinfra"] == 1


def live_config(gateway: Any) -> GatewayConfig:
    return gateway.server.app[LIVE].config


@own_redis_server
@pytest.mark.slow
async def test_redis_stopped_mid_run_and_restarted(make_gateway: GatewayFactory, emulator, tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    try:
        gateway = await make_gateway(cache={"url": server.url, "timeout_ms": 200})
        statuses = []
        for round_ in range(30):
            if round_ == 10:
                server.stop()
            if round_ == 20:
                server.start()
                await asyncio.sleep(1.2)  # past the cache's back-off: it tries Redis again
            docs = documents(f"round{round_}", 5)
            response = await gateway.post(DI, json={"queries": [QUERY], "documents": docs})
            statuses.append(response.status)
            assert (await response.json())["scores"] == pytest.approx(expected(docs), abs=1e-12)
        assert statuses == [200] * 30

        # Back in use: a repeat of the last request is served from Redis.
        response = await gateway.post(DI, json={"queries": [QUERY], "documents": documents("round29", 5)})
        assert response.headers["X-Rerank-Provider"] == "cache"
        with server.client() as client:
            # Rounds 20..29 wrote 5 pairs each into the query's hash (the restart lost 0..9).
            # The cache group of DeepInfra, the model's reference: named by what scores (its scoring
            # identity), marked `?` since no canary has judged it (probes are off here).
            group = f"{MODEL}@{scoring_identity(live_config(gateway).providers['deepinfra'])}?"
            assert client.hlen(redis_key(group, None, QUERY)) == 50
    finally:
        server.stop()
