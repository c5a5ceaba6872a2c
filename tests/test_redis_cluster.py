"""Redis Cluster: `redis+cluster://` URLs, the cluster client's set-up, and a gateway on a real cluster.

The cache and ledger contracts run against the cluster too: their fixtures in
test_cache_contract.py and test_budget_ledger.py have a "redis-cluster" backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import TryAgainError

from gateway.budget import Limit, RedisLedger, Reservation
from gateway.cache import pair_keys
from gateway.cache.redis import RedisScoreCache
from gateway.config import ConfigError, parse_config
from gateway.redisio.client import cluster_nodes, node_addresses, node_url
from gateway.redisio.cluster import REFRESH_EVERY_SECONDS, ClusterConnections, NodeFailure, _parse_shards
from tests.support.config import gateway_config
from tests.support.gateway import GatewayFactory, emulator_requests
from tests.support.polling import eventually
from tests.support.stall import stall_the_next_call

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
    assert parse_config(gateway_config("http://127.0.0.1:1", ["deepinfra"], cache={"url": url})).cache.url == url


@pytest.mark.parametrize(("url", "problem"), [
    ("redis+cluster://", "names no node"),
    ("redis+cluster://a:7000,,b:7001", "names no node"),
    ("redis+cluster://a:port", "no valid port"),
    ("redis+cluster://a:7000/2", "only database 0"),
    ("redis-cluster://a:7000", "redis+cluster://"),
    ("redis+cluster://a:7000?node=b:7000", "expected node=ANNOUNCED_HOST:PORT=REACHABLE_HOST:PORT"),
    ("redis+cluster://a:7000?node=b:7000=c", "is not host:port"),
])
def test_a_bad_cluster_url_stops_the_gateway_with_the_reason(url, problem):
    with pytest.raises(ConfigError, match=f"cache.url: .*{re.escape(problem)}"):
        parse_config(gateway_config("http://127.0.0.1:1", ["deepinfra"], cache={"url": url}))


def test_each_node_is_reached_with_the_cluster_urls_credentials_tls_and_options():
    url = "rediss+cluster://user:pw@[::1]:7000,h:7001/0?ssl_cert_reqs=none"
    assert node_url(url, "10.0.0.9", 7002) == "rediss://user:pw@10.0.0.9:7002/0?ssl_cert_reqs=none"
    assert node_url(url, "::1", 7000) == "rediss://user:pw@[::1]:7000/0?ssl_cert_reqs=none"
    assert node_url("redis+cluster://a:1,b:2", "b", 2) == "redis://b:2"
    # The node addresses are the cluster client's option, not one redis-py knows.
    mapped = "redis+cluster://a:1?node=pod-0.svc%3A6379%3D10.0.0.9%3A7002&ssl_cert_reqs=none&node=pod-1:6379=b:1"
    assert node_url(mapped, "10.0.0.9", 7002) == "redis://10.0.0.9:7002?ssl_cert_reqs=none"
    assert node_addresses(mapped) == {("pod-0.svc", 6379): ("10.0.0.9", 7002), ("pod-1", 6379): ("b", 1)}


async def test_the_cluster_connections_keep_the_single_server_bounds():
    commands = ClusterConnections("redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001", 0.15, max_connections=8)
    node = commands._node("127.0.0.1:7000").connections
    settings = node._client.connection_pool.connection_kwargs
    assert (settings["password"], settings["port"], settings["socket_connect_timeout"]) == ("pw", 7000, 2.0)
    assert node._turns._value == 8  # per node
    await commands.aclose()


# --- the client on a real cluster


async def test_warm_up_opens_connections_to_every_primary(redis_cluster_url, redis_cluster: RedisCluster):
    commands = ClusterConnections(redis_cluster_url, timeout_seconds=1.0, max_connections=8)
    before = _connections_per_node(redis_cluster)
    await commands.warm_up(5)
    opened = [now - then for now, then in zip(_connections_per_node(redis_cluster), before)]
    assert opened == [5, 5, 5]  # the one that told the layout is one of them
    await commands.aclose()


async def test_warm_up_of_an_unreachable_cluster_is_quiet(unused_tcp_port, caplog: pytest.LogCaptureFixture):
    commands = ClusterConnections(f"redis+cluster://127.0.0.1:{unused_tcp_port}", timeout_seconds=0.2, max_connections=8)
    with caplog.at_level(logging.DEBUG):
        await commands.warm_up(5)  # neither raises nor logs: callers report a dead Redis once, later
        await commands.aclose()
        await asyncio.sleep(0)  # let a failed background task, if any, be reported
    loud = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == []


async def test_a_burst_beyond_the_pool_size_waits_and_no_node_sees_more_connections(
    redis_cluster_url, redis_cluster: RedisCluster,
):
    # Every node's connections wait for a turn when all are in use, as one server's do.
    cache = RedisScoreCache.from_url(redis_cluster_url, ttl_seconds=3600, timeout_seconds=2.0, max_connections=4)
    before = _connections_per_node(redis_cluster)
    queries = [f"query {i}" for i in range(12)]  # on every node, each request touching several
    await cache.put_many(pair_keys("m", None, queries, DOCS * 3), [0.5] * 12)
    results = await asyncio.gather(*[cache.get_many(pair_keys("m", None, queries, DOCS * 3)) for _ in range(200)])
    assert results == [[0.5] * 12] * 200
    assert cache.available
    # At most 4 a node; the layout is asked over one of them.
    assert all(now - then <= 4 for now, then in zip(_connections_per_node(redis_cluster), before))
    await cache.close()


async def test_a_slot_found_elsewhere_is_followed_there_and_the_map_corrected(redis_cluster_url):
    commands = ClusterConnections(redis_cluster_url, timeout_seconds=2.0, max_connections=4)
    await commands.warm_up(1)
    assert commands._owners is not None
    slot = key_slot(b"{moved}")
    right = commands._owners[slot]
    commands._owners[slot] = next(name for name in commands._primaries if name != right)  # a stale map
    assert await commands.execute([("SET", "{moved}a", "1"), ("GET", "{moved}a")]) == [b"OK", b"1"]
    assert commands._owners[slot] == right
    await commands.aclose()


@contextlib.contextmanager
def migrating(redis_cluster: RedisCluster, source_name: str, slot: int) -> Iterator[tuple[redis.Redis, redis.Redis, str]]:
    """`slot` in migration from its owner `source_name` to another master: (source, target, target's name)."""
    by_name = {f"127.0.0.1:{port}": node for (port, _), node in zip(redis_cluster.ports, redis_cluster.nodes())}
    source = by_name[source_name]
    target_name, target = next((name, node) for name, node in by_name.items() if name != source_name)
    source_id, target_id = source.execute_command("CLUSTER", "MYID"), target.execute_command("CLUSTER", "MYID")
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    try:
        yield source, target, target_name
    finally:
        for node in (source, target):
            node.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        for node in by_name.values():
            node.close()


@pytest.mark.parametrize("stale_map", [False, True], ids=["asked", "moved-then-asked"])
async def test_a_slot_being_migrated_is_asked_for_on_its_new_node(
    redis_cluster_url, redis_cluster: RedisCluster, stale_map: bool,
):
    commands = ClusterConnections(redis_cluster_url, timeout_seconds=2.0, max_connections=4)
    await commands.warm_up(1)
    assert commands._owners is not None
    slot = key_slot(b"{asked}")
    source_name = commands._owners[slot]
    with migrating(redis_cluster, source_name, slot) as (_, target, target_name):
        if stale_map:  # first to a node that answers MOVED to the source: two redirects in a row
            commands._owners[slot] = next(name for name in commands._primaries if name not in (source_name, target_name))
        # The key is not on the source: it answers ASK, and the command goes to the target with ASKING.
        assert await commands.execute([("SET", "{asked}k", "v"), ("GET", "{asked}k")]) == [b"OK", b"v"]
        assert target.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
        assert commands._owners[slot] == source_name  # an ASK moves one key, not the slot
        assert await commands.execute([("DEL", "{asked}k")]) == [1]
    await commands.aclose()


async def test_a_tryagain_is_sent_once_more_after_a_pause(redis_cluster_url, redis_cluster: RedisCluster):
    commands = ClusterConnections(redis_cluster_url, timeout_seconds=2.0, max_connections=4)
    await commands.warm_up(1)
    assert commands._owners is not None
    slot = key_slot(b"{again}")
    assert await commands.execute([("SET", "{again}here", "1")]) == [b"OK"]
    with migrating(redis_cluster, commands._owners[slot], slot) as (source, _, _):
        def refused() -> int:  # the MGETs this node answered with an error before running them
            return int(source.info("commandstats").get("cmdstat_mget", {}).get("rejected_calls", 0))

        before = refused()
        # One key on the source, one not: a key split by the migration, which answers TRYAGAIN.
        [reply] = await commands.execute_each([("MGET", "{again}here", "{again}gone")])
        assert isinstance(reply, TryAgainError)  # still split after the pause: this call's miss
        assert refused() == before + 2  # sent, and once more
        source.delete("{again}here")
    await commands.aclose()


async def test_a_cached_query_on_a_slot_in_migration_is_still_read(redis_cluster_url, redis_cluster: RedisCluster):
    cache = RedisScoreCache.from_url(redis_cluster_url, ttl_seconds=3600, timeout_seconds=2.0)
    await cache.start()
    commands = cache._redis
    assert isinstance(commands, ClusterConnections) and commands._owners is not None
    hot, other = queries_on_distinct_nodes(commands._owners, 2)
    keys = pair_keys("m", None, [hot, hot, other], DOCS[:3])
    await cache.put_many(keys, [0.25, 0.5, 0.75])
    slot = slot_of(hot)
    with migrating(redis_cluster, commands._owners[slot], slot):
        # Its hash is still on the source, its leases and buckets exist nowhere: the lookup, naming
        # them all, meets TRYAGAIN; its hash, read alone, answers.
        found = await cache.lookup(keys)
        assert (found.scores, found.elsewhere) == ([0.25, 0.5, 0.75], frozenset())
    await cache.close()


async def test_the_map_comes_from_cluster_shards_and_drops_nodes_it_no_longer_names(redis_cluster_url):
    commands = ClusterConnections(redis_cluster_url, timeout_seconds=2.0, max_connections=4)
    await commands.warm_up(1)
    assert commands._shards_known is True  # Redis 7 answers CLUSTER SHARDS
    assert len(set(commands._owners or ())) == 3
    gone = commands._node("127.0.0.1:1")  # a node the cluster removed since (del-node)
    await commands._read_layout()
    assert "127.0.0.1:1" not in commands._nodes and not gone.connections._idle
    await commands.aclose()


class SilentNodes:
    """Servers that accept connections and read, never answering: hung Cluster nodes."""

    def __init__(self) -> None:
        self.connects = 0
        self._accepted: list[asyncio.StreamWriter] = []
        self._servers: list[asyncio.Server] = []

    async def start(self) -> str:
        """One more silent node: its name."""
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connects += 1
            self._accepted.append(writer)
            await reader.read()  # reads, never answers

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        self._servers.append(server)
        return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        for writer in self._accepted:  # the servers' ends, or they are collected open after the loop closed
            writer.close()
        for server in self._servers:
            server.close()
            await server.wait_closed()


def slot_of(query: str) -> int:
    return key_slot(f"rr:{{{pair_keys('m', None, [query], DOCS[:1])[0][0]}}}".encode())


def queries_on_distinct_nodes(owners: list[str], count: int) -> list[str]:
    found: dict[str, str] = {}
    for query in (f"query {i}" for i in range(200)):
        found.setdefault(owners[slot_of(query)], query)
    assert len(found) >= count, found
    return list(found.values())[:count]


async def test_a_hung_node_costs_its_own_keys_only_and_is_then_left_alone(
    redis_cluster_url, caplog: pytest.LogCaptureFixture,
):
    silent = SilentNodes()
    hung = await silent.start()
    cache = RedisScoreCache.from_url(redis_cluster_url, ttl_seconds=3600, timeout_seconds=0.5)
    await cache.start()
    commands = cache._redis
    assert isinstance(commands, ClusterConnections) and commands._owners is not None
    healthy, other = queries_on_distinct_nodes(commands._owners, 2)
    keys = pair_keys("m", None, [healthy, other], DOCS[:2])
    await cache.put_many(keys, [0.25, 0.75])
    hung_slot = slot_of(other)
    commands._seeds.append(hung)  # named in the URL: kept through refreshes that find it in no map
    with caplog.at_level(logging.WARNING, logger="gateway.cache"):
        for _ in range(5):
            commands._owners[hung_slot] = hung  # as if it owned the slot (a refresh may have corrected it)
            assert await cache.get_many(keys) == [0.25, None]  # the healthy node's score, in time
            assert cache.available  # the cache as a whole is not backed off
    assert silent.connects == 3  # three failures in a row; then the node is left alone, no more I/O
    assert [r.getMessage() for r in caplog.records] == [
        f"redis cache read failed in part (NodeFailure: node {hung}: TimeoutError: timed out); "
        "serving uncached for that node's keys"
    ]
    await cache.close()
    await silent.close()


async def test_several_hung_nodes_back_the_whole_cluster_off(redis_cluster_url):
    silent = SilentNodes()
    cache = RedisScoreCache.from_url(redis_cluster_url, ttl_seconds=3600, timeout_seconds=0.3)
    await cache.start()
    commands = cache._redis
    assert isinstance(commands, ClusterConnections) and commands._owners is not None
    queries = queries_on_distinct_nodes(commands._owners, 3)
    keys = pair_keys("m", None, queries, DOCS[:3])
    hung = {slot_of(query): await silent.start() for query in queries[1:]}
    commands._seeds += hung.values()  # named in the URL: kept through refreshes that find them in no map
    for _ in range(3):
        for slot, node in hung.items():  # again each time: a refresh may have corrected them
            commands._owners[slot] = node
        assert await cache.get_many(keys) == [None, None, None]
    assert not cache.available  # two nodes of three failing three calls in a row: the cluster's outage
    await cache.close()
    await silent.close()


async def test_a_stall_of_this_process_is_charged_to_no_node(
    redis_cluster_url, redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture,
):
    cache = RedisScoreCache.from_url(redis_cluster_url, ttl_seconds=3600, timeout_seconds=0.1)
    await cache.start()
    commands = cache._redis
    assert isinstance(commands, ClusterConnections) and commands._owners is not None
    keys = pair_keys("m", None, queries_on_distinct_nodes(commands._owners, 3), DOCS[:3])
    nodes = redis_cluster.nodes()
    with caplog.at_level(logging.WARNING, logger="gateway.cache"):
        for _ in range(5):
            stall_the_next_call(0.3, nodes)
            assert await cache.get_many(keys) == [None, None, None]  # cut by the bound: served uncached
    for node in nodes:
        node.close()
    assert cache.available and all(node.backoff.available for node in commands._nodes.values())
    assert "while this process stalled" in caplog.records[0].getMessage()
    await cache.close()


async def test_credentials_in_the_url_are_used(redis_cluster_url, redis_cluster: RedisCluster):
    for node in redis_cluster.nodes():
        with node:
            node.acl_setuser("gateway", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"])
    try:
        # 5 s: on a busy machine reading the slot map has taken over 1 s.
        good = RedisScoreCache.from_url(redis_cluster_url.replace("://", "://gateway:s3cret@"), 3600, 5.0)
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


# --- address remapping


@pytest.fixture
def cluster_behind_names(tmp_path) -> Iterator[RedisCluster]:
    """Three masters that announce host names this machine cannot resolve (`node-PORT.invalid`),
    as pods or containers announce names only their own network knows."""
    from tests.support.redis_cluster import MISSING, RedisCluster

    if MISSING is not None:
        pytest.skip(MISSING)
    cluster = RedisCluster(tmp_path, extra_args=["--cluster-preferred-endpoint-type", "hostname"])
    cluster.start()
    try:
        for (port, _), node in zip(cluster.ports, cluster.nodes()):
            with node:
                node.config_set("cluster-announce-hostname", f"node-{port}.invalid")
        deadline = time.monotonic() + 20
        for node in cluster.nodes():  # until every node announces every master by its name
            with node:
                while not all(name.startswith("node-") for name in _parse_shards(
                        node.execute_command("CLUSTER", "SHARDS"), "")[1]):  # type: ignore[index]
                    assert time.monotonic() < deadline, "the nodes' names did not spread"
                    time.sleep(0.1)
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.cluster
async def test_nodes_announced_under_names_unreachable_here_are_reached_where_the_url_says(
    cluster_behind_names: RedisCluster,
):
    keys = [f"{{{tag}}}k" for tag in ("a", "b", "c", "d", "e", "f")]
    plain = ClusterConnections(cluster_behind_names.url, timeout_seconds=1.0, max_connections=2)
    await plain.warm_up(1)
    assert all(name.split(":")[0].endswith(".invalid") for name in plain._primaries), plain._primaries
    assert all(isinstance(reply, NodeFailure) for reply in await plain.execute_each([("GET", key) for key in keys]))
    await plain.aclose()
    remap = "&".join(f"node=node-{port}.invalid:{port}=127.0.0.1:{port}" for port, _ in cluster_behind_names.ports)
    mapped = ClusterConnections(f"{cluster_behind_names.url}?{remap}", timeout_seconds=1.0, max_connections=2)
    assert await mapped.execute([("SET", key, key) for key in keys]) == [b"OK"] * len(keys)
    assert await mapped.execute([("GET", key) for key in keys]) == [key.encode() for key in keys]
    assert len({mapped._owners[key_slot(key.encode())] for key in keys if mapped._owners}) > 1  # several nodes
    await mapped.aclose()


async def test_the_map_is_read_again_on_a_timer_while_calls_are_made(redis_cluster_url):
    """A slot that moved where this process sends nothing is learned without a MOVED: the map is
    read again every REFRESH_EVERY_SECONDS while calls are made (here the last read is made to look
    older than that, instead of waiting)."""
    commands = ClusterConnections(redis_cluster_url, timeout_seconds=2.0, max_connections=4)
    await commands.warm_up(1)
    assert commands._owners is not None
    slot = key_slot(b"{quiet}")
    right = commands._owners[slot]
    commands._owners[slot] = next(name for name in commands._primaries if name != right)  # resharded since
    commands._last_refresh -= REFRESH_EVERY_SECONDS + 1
    assert await commands.execute([("SET", "{elsewhere}a", "1")]) == [b"OK"]  # another slot: no MOVED
    await eventually(lambda: commands._owners is not None and commands._owners[slot] == right,
                     what="the timer's refresh correcting the map")
    await commands.aclose()


async def test_a_burst_of_redirects_is_followed_by_one_more_read_of_the_map(redis_cluster_url):
    """The MOVED of one slot corrects that slot at once; the read of the map that follows the burst
    corrects the others a reshard moved with it, before any call meets them."""
    commands = ClusterConnections(redis_cluster_url, timeout_seconds=2.0, max_connections=4)
    await commands.warm_up(1)
    assert commands._owners is not None
    first, second = key_slot(b"{burst-a}"), key_slot(b"{burst-b}")
    right = {slot: commands._owners[slot] for slot in (first, second)}
    for slot in (first, second):
        commands._owners[slot] = next(name for name in commands._primaries if name != right[slot])
    commands._last_refresh = asyncio.get_running_loop().time()  # just read: the MOVED's refresh must wait
    assert await commands.execute([("SET", "{burst-a}x", "1")]) == [b"OK"]
    assert commands._owners[first] == right[first]
    await eventually(lambda: commands._owners is not None and commands._owners[second] == right[second],
                     what="the trailing read of the map correcting the slot nobody asked for")
    await commands.aclose()
