"""The score cache's client CPU per lookup: direct connections against redis-py's command path.

    python -m bench run cache-client                       # 20 cached pairs, c=1 and c=16
    python -m bench run cache-client -- --pairs 40 --calls 20000

Times, in this process, `RedisScoreCache.lookup` of one query's cached pairs (the read a fully
cached request makes) against a private redis-server on a free port, pinned to the other core
where there are two. The same cache is built twice, once on DirectConnections (what `serve` uses
for one server) and once on ClientCommands (redis-py's `execute_command`, what it used before;
a Cluster uses DirectConnections per node now, see cluster_client.py); the two take turns, `--rounds` times, and the table gives this
process's CPU per lookup (user + system), so Redis' own time is not in it. It asserts nothing:
only the ratio within one run compares.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.harness import ProcessGroup, load_average, plan_pinning, redis_url, start_redis
from bench.registry import Figures
from gateway.cache import pair_keys
from gateway.cache.redis import RedisScoreCache
from gateway.redisio.client import redis_client
from gateway.redisio.commands import ClientCommands, Commands, DirectConnections

PATHS = ("direct connections", "redis-py execute_command")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="score cache client CPU per lookup")
    parser.add_argument("--pairs", type=int, default=20, help="cached pairs per lookup (default 20)")
    parser.add_argument("--calls", type=int, default=10_000, help="lookups per path, cell and round (default 10000)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="default 1 16")
    parser.add_argument("--rounds", type=int, default=3, help="turns each path takes (default 3)")
    return parser.parse_args(argv)


def build(path: str, url: str) -> RedisScoreCache:
    client = redis_client(url, timeout_seconds=1.0, max_connections=32)
    commands: Commands = DirectConnections(client, 32) if path == PATHS[0] else ClientCommands(client)
    return RedisScoreCache(commands, ttl_seconds=3600, timeout_seconds=1.0)


async def cpu_per_lookup_us(cache: RedisScoreCache, keys: list, calls: int, concurrency: int) -> float:
    async def worker(count: int) -> None:
        for _ in range(count):
            await cache.get_many(keys)

    await worker(200)  # connections open, scripts loaded
    started = time.process_time()
    await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
    return (time.process_time() - started) / (calls // concurrency * concurrency) * 1e6


async def measure(args: argparse.Namespace, url: str) -> dict[tuple[str, int], list[float]]:
    caches = {path: build(path, url) for path in PATHS}
    keys = pair_keys("bench", None, ["what does the plan cost?"] * args.pairs,
                     [f"passage {i} " + "x" * 380 for i in range(args.pairs)])
    await caches[PATHS[0]].put_many(keys, [i / args.pairs for i in range(args.pairs)])
    for cache in caches.values():
        assert all(score is not None for score in await cache.get_many(keys)), "the pairs are not cached"
    figures: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for concurrency in args.concurrency:
            for path, cache in caches.items():
                figures.setdefault((path, concurrency), []).append(
                    await cpu_per_lookup_us(cache, keys, args.calls, concurrency))
    for cache in caches.values():
        await cache.close()
    return figures


def main(argv: Sequence[str] | None = None) -> Figures:
    args = parse_args(argv)
    found: Figures = {}
    pinning = plan_pinning(enabled=True)
    with tempfile.TemporaryDirectory() as workdir, ProcessGroup(Path(workdir)) as group:
        redis = start_redis(group, pinning.emulator)
        group.wait_ready()
        if pinning.proxy:
            os.sched_setaffinity(0, pinning.proxy)  # this process is the one under test
        print(f"load before: {load_average()}; {args.pairs} cached pairs per lookup; {pinning.note}")
        figures = asyncio.run(measure(args, redis_url(redis)))
        print(f"load after: {load_average()}\n")
    print("| concurrency | path | client CPU µs per lookup, each round | median | ÷ redis-py's |")
    print("|---|---|---|---|---|")
    for concurrency in args.concurrency:
        baseline = statistics.median(figures[(PATHS[1], concurrency)])
        for path in PATHS:
            rounds = figures[(path, concurrency)]
            median = statistics.median(rounds)
            found[f"{path.replace(' ', '_')}.c{concurrency}.cpu_us_per_lookup"] = median
            print(f"| {concurrency} | {path} | {' / '.join(f'{r:.1f}' for r in rounds)} | {median:.1f} | "
                  f"{median / baseline:.2f}x |")
    return found
