"""A Redis Cluster failover under load: one master of three SIGKILLed, its replica promoted.

Three masters with a replica each (tests/support/redis_cluster.py, `cluster-node-timeout` 2 s), a
warm set of queries spread over the shards, eight clients asking for it again and again while a
master is killed. Every request's outcome is kept by phase (before the kill, down until the
replica is promoted, after) and by shard (the killed master's, or a healthy one's), and the
figures are printed (`pytest -s`). Asserted are counts, never timings.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from redis.crc import key_slot

from gateway.cache.base import query_group
from tests.support.gateway import GatewayFactory

if TYPE_CHECKING:  # imported by pytest as a plugin, so that its asserts are rewritten
    from tests.support.redis_cluster import RedisCluster

pytest_plugins = ["tests.support.redis_cluster"]

DI = "/v1/inference/Qwen/Qwen3-Reranker-8B"
DOCS = ["free", "25,000 rubles", "opens at 8:00", "mild weather"]
QUERIES = [f"failover question {i}" for i in range(90)]
CLIENTS = 8
# Eight clients, the gateway and the emulator share one event loop on a busy machine: a provider
# call slower than the default attempt floor (250 ms) would be a 504 that says nothing of Redis.
RESILIENCE = {"attempt_min_ms": 5000}
# Likewise a Redis call's bound: a stalled loop must not pass for a node's failure. (The fix is
# not in the bound: before it, the healthy shards missed whatever the bound, 1-7% hits.)
CACHE_TIMEOUT_MS = 1000
# A request on a healthy shard may still miss when the machine stalls past that bound.
NEARLY_ALL = 0.98
WAIT_SECONDS = 40.0  # for the promotion, and for the killed shard's hits to come back


@dataclass
class Outcomes:
    """What the clients saw, per (phase, shard): requests, statuses, cached pairs of all pairs."""

    phase: str = "before"
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    statuses: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    hits: Counter[tuple[str, str]] = field(default_factory=Counter)
    recent_dead: list[bool] = field(default_factory=list)  # the killed shard's last requests: all cached?

    def note(self, phase: str, shard: str, status: int, hits: int) -> None:
        self.requests[phase, shard] += 1
        self.statuses[phase, shard, status] += 1
        self.pairs[phase, shard] += len(DOCS)
        self.hits[phase, shard] += hits
        if phase == "after" and shard == "killed":
            self.recent_dead = [*self.recent_dead[-19:], hits == len(DOCS)]

    def share(self, phase: str, shard: str) -> float:
        return self.hits[phase, shard] / self.pairs[phase, shard] if self.pairs[phase, shard] else float("nan")

    def table(self, title: str) -> str:
        lines = [title, f"  {'phase':<7} {'shard':<8} {'requests':>8} {'pairs':>6} {'hits':>6} {'hit %':>6}  statuses"]
        for phase in ("before", "down", "after"):
            for shard in ("healthy", "killed"):
                statuses = {s: n for (p, sh, s), n in sorted(self.statuses.items()) if (p, sh) == (phase, shard)}
                lines.append(
                    f"  {phase:<7} {shard:<8} {self.requests[phase, shard]:>8} {self.pairs[phase, shard]:>6} "
                    f"{self.hits[phase, shard]:>6} {100 * self.share(phase, shard):>6.1f}  {statuses}"
                )
        return "\n".join(lines)


def _hits(response_header: str | None) -> int:
    if not response_header:
        return 0
    fields = dict(part.strip().split("=") for part in response_header.split(";"))
    return int(fields["hits"])


async def _client(gateway: TestClient, shard_of: dict[str, str], outcomes: Outcomes, stop: asyncio.Event, seed: int):
    order = random.Random(seed)
    while not stop.is_set():
        query = order.choice(QUERIES)
        phase = outcomes.phase
        response = await gateway.post(DI, json={"queries": [query], "documents": DOCS})
        await response.read()
        if response.status == 429:
            assert "Retry-After" in response.headers
        if outcomes.phase == phase:  # a request that straddles a phase change counts for neither
            outcomes.note(phase, shard_of[query], response.status, _hits(response.headers.get("X-Rerank-Cache")))


async def _warm(gateway: TestClient) -> None:
    for start in range(0, len(QUERIES), 10):
        replies = await asyncio.gather(*(
            gateway.post(DI, json={"queries": [query], "documents": DOCS}) for query in QUERIES[start:start + 10]
        ))
        assert all(reply.status == 200 for reply in replies)


async def _master_of_each_query(cluster: RedisCluster) -> dict[str, int]:
    """The port of the master holding each query's scores, from the slot map and the keys' names."""
    model = None
    masters = [master for master, _ in cluster.shards()]
    for master in masters:
        async with aioredis.Redis(port=master) as node:
            for key in await node.keys("rr:{*"):
                name = key.decode() if isinstance(key, bytes) else key
                model = name[len("rr:{"):].rpartition(":")[0]  # rr:{MODEL:DIGEST}
    assert model is not None, "the warm-up stored nothing"
    owner = await _slot_owners(masters[0])
    return {query: owner[key_slot(f"rr:{{{query_group(model, None, query)}}}".encode())] for query in QUERIES}


async def _slot_owners(port: int) -> dict[int, int]:
    owners = {}
    async with aioredis.Redis(port=port) as node:
        for entry in await node.execute_command("CLUSTER", "SLOTS"):
            for slot in range(int(entry[0]), int(entry[1]) + 1):
                owners[slot] = int(entry[2][1])
    return owners


async def _replicas_caught_up(cluster: RedisCluster) -> None:
    """Every replica holds as many keys as its master: the warm set survives a master's death."""
    for _ in range(400):
        sizes = []
        for master, replicas in cluster.shards():
            async with aioredis.Redis(port=master) as node:
                expected = await node.dbsize()
            for replica in replicas:
                async with aioredis.Redis(port=replica) as node:
                    sizes.append(await node.dbsize() == expected)
        if all(sizes):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the replicas never caught up with their masters")


async def _promoted(port: int) -> bool:
    try:
        async with aioredis.Redis(port=port, socket_connect_timeout=0.5) as node:
            role = await node.execute_command("ROLE")
    except aioredis.RedisError:
        return False
    return role[0] in (b"master", "master")


async def _budget_master(cluster: RedisCluster) -> int:
    return (await _slot_owners(cluster.shards()[0][0]))[key_slot(b"{budget}")]


async def _failover_under_load(
    cluster: RedisCluster, gateway: TestClient, victim_of: Callable[[RedisCluster], Awaitable[int]], title: str,
) -> Outcomes:
    """Kill a master under load: the figures by phase and shard. `victim_of` picks the master's port."""
    await _replicas_caught_up(cluster)
    master_of = await _master_of_each_query(cluster)
    shards = dict(cluster.shards())
    victim = await victim_of(cluster)
    replica = shards[victim][0]
    shard_of = {query: "killed" if master == victim else "healthy" for query, master in master_of.items()}
    outcomes = Outcomes()
    stop = asyncio.Event()
    clients = [asyncio.ensure_future(_client(gateway, shard_of, outcomes, stop, seed)) for seed in range(CLIENTS)]
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_SECONDS
        while sum(outcomes.requests[("before", shard)] for shard in ("healthy", "killed")) < 100:
            assert loop.time() < deadline, "the clients got nowhere before the kill"
            await asyncio.sleep(0.02)
        cluster.kill(victim)
        outcomes.phase = "down"
        while not await _promoted(replica):
            assert loop.time() < deadline, "the replica was never promoted"
            await asyncio.sleep(0.05)
        outcomes.phase = "after"
        deadline = loop.time() + WAIT_SECONDS
        while not (len(outcomes.recent_dead) == 20 and all(outcomes.recent_dead)):
            if loop.time() > deadline:
                break  # asserted below, after the figures are printed
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
    print("\n" + outcomes.table(f"{title} (killed master {victim}, replica {replica} promoted)"))
    for task in clients:
        failure = task.exception()
        if failure is not None:
            raise failure
    return outcomes


async def _any_master_but_the_ledgers(cluster: RedisCluster) -> int:
    ledger = await _budget_master(cluster)
    return next(master for master, _ in cluster.shards() if master != ledger)


@pytest.mark.slow
async def test_one_dead_master_costs_only_its_own_shard(
    make_gateway: GatewayFactory, redis_failover_cluster: RedisCluster,
):
    url = redis_failover_cluster.url
    gateway = await make_gateway(fallback=["deepinfra"], cache={"url": url, "timeout_ms": CACHE_TIMEOUT_MS}, resilience=RESILIENCE)
    await _warm(gateway)
    outcomes = await _failover_under_load(
        redis_failover_cluster, gateway, _any_master_but_the_ledgers, "one master of three killed",
    )
    assert set(status for (_, _, status) in outcomes.statuses) == {200}  # nobody lost a request
    assert outcomes.share("before", "healthy") >= NEARLY_ALL and outcomes.share("before", "killed") >= NEARLY_ALL
    # Between the kill and the promotion the healthy shards are still read from the cache.
    assert outcomes.requests["down", "healthy"] >= 20
    assert outcomes.share("down", "healthy") >= 0.9
    # ... and the killed shard's warm pairs come back from its promoted replica.
    assert outcomes.recent_dead == [True] * 20


@pytest.mark.slow
async def test_over_budget_cached_requests_answer_through_the_ledgers_failover(
    make_gateway: GatewayFactory, redis_failover_cluster: RedisCluster,
):
    url = redis_failover_cluster.url
    warmer = await make_gateway(fallback=["deepinfra"], cache={"url": url, "timeout_ms": CACHE_TIMEOUT_MS}, resilience=RESILIENCE)
    await _warm(warmer)
    # Over budget from its first call: it may answer only what the cache holds.
    broke = await make_gateway(fallback=["deepinfra"], cache={"url": url, "timeout_ms": CACHE_TIMEOUT_MS},
                               budget={"daily_usd": 1e-9}, resilience=RESILIENCE)
    outcomes = await _failover_under_load(
        redis_failover_cluster, broke, _budget_master, "over budget, the ledger's master killed",
    )
    assert set(status for (_, _, status) in outcomes.statuses) <= {200, 429}
    for phase in ("before", "down", "after"):
        # Every request on a healthy shard is fully cached, and answered, wherever the ledger is.
        assert outcomes.statuses[phase, "healthy", 200] >= NEARLY_ALL * outcomes.requests[phase, "healthy"]
        assert outcomes.share(phase, "healthy") >= NEARLY_ALL
    assert outcomes.requests["down", "healthy"] >= 20
    # The killed shard's pairs: refused while they cannot be read, answered again once promoted.
    assert outcomes.recent_dead == [True] * 20
