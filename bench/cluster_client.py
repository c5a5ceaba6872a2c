"""The score cache's client CPU per lookup on a three-master Redis Cluster.

    python bench/cluster_client.py                  # this tree
    PYTHONPATH=/path/to/base python bench/cluster_client.py   # another tree's gateway/, same cluster

A private three-node cluster (tests/support/redis_cluster.py, on free loopback ports), 64 queries
of 20 cached pairs spread over it, and `RedisScoreCache.get_many` of one query at a time at c=1
and c=16. Prints this process's CPU (user + system) per lookup, so the nodes' own time is not in
it, and lookups per second. It asserts nothing; a shared machine is noisy, so compare two trees
run one after the other, more than once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or Path(__file__).resolve().parent.parent)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.cache import pair_keys  # noqa: E402
from gateway.cache.redis import RedisScoreCache  # noqa: E402
from tests.support.redis_cluster import RedisCluster  # noqa: E402

QUERIES = 64
PAIRS = 20


async def measure(url: str, lookups: int, concurrencies: list[int]) -> None:
    cache = RedisScoreCache.from_url(url, ttl_seconds=3600, timeout_seconds=1.0)
    await cache.start()
    keys = [pair_keys("m", None, [f"query {q}"] * PAIRS, [f"passage {p}" for p in range(PAIRS)]) for q in range(QUERIES)]
    for query_keys in keys:
        await cache.put_many(query_keys, [0.5] * PAIRS)

    async def worker(count: int, offset: int) -> None:
        for i in range(count):
            assert (await cache.get_many(keys[(i + offset) % QUERIES]))[0] == 0.5

    await worker(200, 0)  # connections open, scripts loaded
    for concurrency in concurrencies:
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(lookups // concurrency, w) for w in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"c={concurrency:<3} {1e6 * cpu / lookups:7.1f} us CPU per lookup  {lookups / wall:8.0f} lookups/s")
    await cache.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="score cache client CPU per lookup on a Redis Cluster")
    parser.add_argument("--lookups", type=int, default=4000, help="per cell (default 4000)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="default 1 16")
    args = parser.parse_args()
    print(f"gateway from {REPO}")
    with tempfile.TemporaryDirectory(prefix="cluster-client-") as folder:
        cluster = RedisCluster(Path(folder))
        cluster.start()
        try:
            asyncio.run(measure(cluster.url, args.lookups, args.concurrency))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
