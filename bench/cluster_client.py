"""The score cache's client CPU per lookup on a three-master Redis Cluster.

    python -m bench run cluster-client                  # this tree
    PYTHONPATH=/path/to/base python -m bench run cluster-client   # another tree's gateway/, same cluster

A private three-node cluster (harness.start_redis_cluster, on free loopback ports), 64 queries
of 20 cached pairs spread over it, and `RedisScoreCache.get_many` of one query at a time at c=1
and c=16. Prints this process's CPU (user + system) per lookup, so the nodes' own time is not in
it, and lookups per second. It asserts nothing; a shared machine is noisy, so compare two trees
run one after the other, more than once.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import gateway
from bench.harness import ProcessGroup, start_redis_cluster
from bench.registry import Figures
from gateway.cache import pair_keys
from gateway.cache.redis import RedisScoreCache

QUERIES = 64
PAIRS = 20


async def measure(url: str, lookups: int, concurrencies: list[int]) -> Figures:
    cache = RedisScoreCache.from_url(url, ttl_seconds=3600, timeout_seconds=1.0)
    await cache.start()
    keys = [pair_keys("m", None, [f"query {q}"] * PAIRS, [f"passage {p}" for p in range(PAIRS)]) for q in range(QUERIES)]
    for query_keys in keys:
        await cache.put_many(query_keys, [0.5] * PAIRS)

    async def worker(count: int, offset: int) -> None:
        for i in range(count):
            assert (await cache.get_many(keys[(i + offset) % QUERIES]))[0] == 0.5

    await worker(200, 0)  # connections open, scripts loaded
    figures: Figures = {}
    for concurrency in concurrencies:
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(lookups // concurrency, w) for w in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"c={concurrency:<3} {1e6 * cpu / lookups:7.1f} us CPU per lookup  {lookups / wall:8.0f} lookups/s")
        figures |= {f"c{concurrency}.cpu_us_per_lookup": 1e6 * cpu / lookups, f"c{concurrency}.lookups_per_s": lookups / wall}
    await cache.close()
    return figures


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description="score cache client CPU per lookup on a Redis Cluster")
    parser.add_argument("--lookups", type=int, default=4000, help="per cell (default 4000)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="default 1 16")
    args = parser.parse_args(argv)
    print(f"gateway from {Path(gateway.__file__).parent}")
    with tempfile.TemporaryDirectory(prefix="cluster-client-") as folder, ProcessGroup(Path(folder)) as group:
        return asyncio.run(measure(start_redis_cluster(group), args.lookups, args.concurrency))
