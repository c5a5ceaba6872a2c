"""Redis Cluster: `redis+cluster://` URLs, the cluster client's set-up, and a gateway on a real cluster.

The cache and ledger contracts run against the cluster too: their fixtures in
test_cache_contract.py and test_budget_ledger.py have a "redis-cluster" backend.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from gateway.budget import Limit, RedisLedger, Reservation
from gateway.cache import pair_keys
from gateway.cache.redis import RedisScoreCache
from gateway.config import ConfigError, parse_config
from gateway.redisio.client import cluster_nodes, redis_client, warm_up
from tests.support.gateway import GatewayFactory, emulator_requests, gateway_settings

if TYPE_CHECKING:  # imported by pytest as a plugin, so that its asserts are rewritten
    from tests.support.redis_cluster import RedisCluster

pytest_plugins = ["tests.support.redis_cluster"]

DI = "/v1/inference/Qwen/Qwen3-Reranker-8B"
QUERY = "what does out-of-court bankruptcy cost?"
DOCS = ["free", "25,000 rubles", "opens at 8:00", "mild weather"]


# --- the URL


@pytest.mark.parametrize(("url", "nodes"), [
    ("redis+cluster://10.0.0.1:7000,10.0.0.2:7001", [("10.0.0.1", 7000), ("10.0.0.2", 7001)]),
    ("redis+cluster://:s3cret@redis-a:7000,redis-b", [("redis-a", 7000), ("redis-b", 6379)]),
    ("rediss+cluster://user:pw@[::1]:7000,h:7001/0?ssl_cert_reqs=none", [("::1", 7000), ("h", 7001)]),
])
def test_a_cluster_url_names_any_of_its_nodes(url, nodes):
    assert cluster_nodes(url) == nodes
    assert parse_config(gateway_settings("http://127.0.0.1:1", ["deepinfra"], cache={"url": url})).cache.url == url


@pytest.mark.parametrize(("url", "problem"), [
    ("redis+cluster://", "names no node"),
    ("redis+cluster://a:7000,,b:7001", "names no node"),
    ("redis+cluster://a:port", "no valid port"),
    ("redis+cluster://a:7000/2", "only database 0"),
    ("redis-cluster://a:7000", "redis+cluster://"),
])
def test_a_bad_cluster_url_stops_the_gateway_with_the_reason(url, problem):
    with pytest.raises(ConfigError, match=f"cache.url: .*{re.escape(problem)}"):
        parse_config(gateway_settings("http://127.0.0.1:1", ["deepinfra"], cache={"url": url}))


async def test_the_cluster_client_keeps_the_single_server_bounds():
    client = redis_client("redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001", timeout_seconds=0.15, max_connections=8)
    assert isinstance(client, AsyncRedisCluster)
    assert sorted(client.nodes_manager.startup_nodes) == ["127.0.0.1:7000", "127.0.0.1:7001"]
    node = client.nodes_manager.startup_nodes["127.0.0.1:7000"]
    assert node.max_connections == 8  # per node
    assert node.connection_kwargs["socket_timeout"] == 0.15
    assert node.connection_kwargs["socket_connect_timeout"] == 2.0
    assert node.connection_kwargs["password"] == "pw"
    assert client.retry.get_retries() == 0  # callers fall back instead
    await client.aclose()
    single = redis_client("redis://127.0.0.1:7000/0", timeout_seconds=0.15, max_connections=8)
    assert not isinstance(single, AsyncRedisCluster)
    await single.aclose()


# --- the client on a real cluster


async def test_warm_up_opens_connections_to_every_primary(redis_cluster_url, redis_cluster: RedisCluster):
    client = redis_client(redis_cluster_url, timeout_seconds=1.0, max_connections=8)
    before = _connections_per_node(redis_cluster)
    await warm_up(client, 5)
    opened = [now - then for now, then in zip(_connections_per_node(redis_cluster), before)]
    # Five for calls on each node, and on the node first asked one more: it told the client the layout.
    assert sorted(opened) == [5, 5, 6]
    await client.aclose()


async def test_warm_up_of_an_unreachable_cluster_is_quiet(unused_tcp_port, caplog: pytest.LogCaptureFixture):
    client = redis_client(f"redis+cluster://127.0.0.1:{unused_tcp_port}", timeout_seconds=0.2, max_connections=8)
    with caplog.at_level(logging.DEBUG):
        await warm_up(client, 5)  # neither raises nor logs: callers report a dead Redis once, later
        await client.aclose()
        await asyncio.sleep(0)  # let a failed background task, if any, be reported
    loud = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == []


async def test_a_burst_beyond_the_pool_size_waits_and_no_node_sees_more_connections(
    redis_cluster_url, redis_cluster: RedisCluster,
):
    # redis-py's cluster pools raise when full; the gateway's callers wait for a turn instead.
    cache = RedisScoreCache.from_url(redis_cluster_url, ttl_seconds=3600, timeout_seconds=2.0, max_connections=4)
    before = _connections_per_node(redis_cluster)
    queries = [f"query {i}" for i in range(12)]  # on every node, each request touching several
    await cache.put_many(pair_keys("m", None, queries, DOCS * 3), [0.5] * 12)
    results = await asyncio.gather(*[cache.get_many(pair_keys("m", None, queries, DOCS * 3)) for _ in range(200)])
    assert results == [[0.5] * 12] * 200
    assert cache.available
    # At most 4 a node for calls, and one more where the client learnt the layout.
    assert all(now - then <= 4 + 1 for now, then in zip(_connections_per_node(redis_cluster), before))
    await cache.close()


async def test_credentials_in_the_url_are_used(redis_cluster_url, redis_cluster: RedisCluster):
    for node in redis_cluster.nodes():
        with node:
            node.acl_setuser("gateway", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"])
    try:
        good = RedisScoreCache.from_url(redis_cluster_url.replace("://", "://gateway:s3cret@"), 3600, 1.0)
        await good.put_many(pair_keys("m", None, [QUERY], DOCS[:1]), [0.5])
        assert await good.get_many(pair_keys("m", None, [QUERY], DOCS[:1])) == [0.5]
        wrong = RedisScoreCache.from_url(redis_cluster_url.replace("://", "://gateway:wrong@"), 3600, 1.0)
        assert not await wrong.ping()
        for _ in range(3):
            assert await wrong.get_many(pair_keys("m", None, [QUERY], DOCS[:1])) == [None]  # refused: a miss
        assert not wrong.available
        await good.close()
        await wrong.close()
    finally:
        for node in redis_cluster.nodes():
            with node:
                node.acl_deluser("gateway")


async def test_an_unreachable_cluster_means_uncached_and_budgets_per_process(unused_tcp_port):
    url = f"redis+cluster://127.0.0.1:{unused_tcp_port}"
    cache = RedisScoreCache.from_url(url, ttl_seconds=3600, timeout_seconds=0.2)
    assert await cache.get_many(pair_keys("m", None, [QUERY], DOCS[:1])) == [None]
    await cache.put_many(pair_keys("m", None, [QUERY], DOCS[:1]), [0.5])
    assert not await cache.ping()
    ledger = RedisLedger.from_url(url, timeout_seconds=0.2)
    reservation = await ledger.reserve([Limit("deepinfra", 1.0, None)], 0.1, 30.0)
    assert isinstance(reservation, Reservation) and reservation.fallback
    await cache.close()
    await ledger.close()


async def test_the_ledger_keeps_every_key_on_one_node(redis_cluster_url, redis_cluster: RedisCluster):
    ledger = RedisLedger.from_url(redis_cluster_url, timeout_seconds=2.0)
    for scope in ("deepinfra", "fireworks", "cohere", "@gateway"):
        reservation = await ledger.reserve([Limit(scope, 1.0, 10.0)], 0.1, 30.0)
        assert isinstance(reservation, Reservation) and not reservation.fallback
        await ledger.settle(reservation, 0.05, 100)
    holding = [keys for keys in redis_cluster.keys_per_node() if keys]
    assert len(holding) == 1 and len(holding[0]) == 8  # a totals hash per window; no hold is left
    assert all(key.startswith(b"rb:{budget}:") for key in holding[0])
    await ledger.close()


# --- a gateway on the cluster


async def test_a_gateway_on_a_cluster_answers_repeats_from_the_cache(
    make_gateway: GatewayFactory, emulator, redis_cluster_url, redis_cluster: RedisCluster,
):
    gateway = await make_gateway(fallback=["deepinfra"], cache={"url": redis_cluster_url}, budget={"daily_usd": 10.0})
    body = {"queries": [QUERY], "documents": DOCS}
    first = await gateway.post(DI, json=body)
    assert first.status == 200 and first.headers["X-Rerank-Provider"] == "deepinfra"
    again = await gateway.post(DI, json=body)
    assert again.status == 200, await again.text()
    assert (again.headers["X-Rerank-Provider"], again.headers["X-Rerank-Cache"]) == ("cache", "hits=4; misses=0")
    assert (await again.json())["scores"] == (await first.json())["scores"]
    assert (await emulator_requests(emulator))["deepinfra"] == 1

    # DeepInfra's pairwise form: one request, 60 queries, one pipelined write fanned out to the nodes.
    queries = [f"question {i}" for i in range(60)]
    pairwise = {"queries": queries, "documents": [f"passage {i}" for i in range(60)]}
    assert (await gateway.post(DI, json=pairwise)).headers["X-Rerank-Cache"] == "hits=0; misses=60"
    repeat = await gateway.post(DI, json=pairwise)
    assert (repeat.headers["X-Rerank-Provider"], repeat.headers["X-Rerank-Cache"]) == ("cache", "hits=60; misses=0")

    keys = redis_cluster.keys_per_node()
    cache_keys = [[key for key in node if key.startswith(b"rr:{")] for node in keys]
    assert sum(len(node) for node in cache_keys) == 61  # one hash per query
    assert sum(1 for node in cache_keys if node) > 1  # spread over the nodes by their hash tags
    ledger_nodes = [node for node in keys if any(key.startswith(b"rb:{budget}:") for key in node)]
    assert len(ledger_nodes) == 1  # the spend of both upstream calls, on the node owning {budget}


def _connections_per_node(cluster: RedisCluster) -> list[int]:
    counts = []
    for node in cluster.nodes():
        with node:
            # Not counting the connection asking, nor the cluster bus.
            counts.append(len(node.client_list(_type="normal")) - 1)
    return counts


def test_the_session_cluster_is_on_loopback_only(redis_cluster: RedisCluster):
    for node in redis_cluster.nodes():
        with node:
            assert node.config_get("bind")["bind"] == "127.0.0.1"
            assert node.config_get("port")["port"] != "6379"
            assert node.cluster("info")["cluster_state"] == "ok"
