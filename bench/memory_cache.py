"""In-process score cache: bytes per cached pair, the layout before and after, and the bound held.

Each shape writes 1,000,000 pairs (one put_many per query, as one request's fresh scores are
written) into a cache with no effective bound, and tracemalloc counts what stays allocated once
the requests' own objects are gone: the cache's whole footprint, group names included. "before" is
the layout the gateway had until this change (an OrderedDict entry per pair holding a
(score, expires) tuple), rebuilt here for the comparison. Last, the same pairs go into a cache with
`max_bytes` = 32 MiB, to show the bound holding (measured bytes <= max_bytes).

    python -m bench run memory-cache            # about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import tracemalloc
from collections import OrderedDict
from collections.abc import Callable, Sequence

from bench.registry import Figures
from gateway.cache.base import PairKey, pair_keys
from gateway.cache.memory import MemoryScoreCache

PAIRS = 1_000_000
GROUP_MODEL = "qwen3-reranker-8b@1f3a9c2e"  # a model and its scoring fingerprint, as cache groups are named
BOUND_BYTES = 32 * 1024 * 1024
GOAL_BYTES_PER_PAIR = 100


class PerPairLayout:
    """The in-process cache before: an LRU entry per pair."""

    def __init__(self) -> None:
        self._entries: OrderedDict[PairKey, tuple[float, float]] = OrderedDict()

    async def put_many(self, keys: Sequence[PairKey], scores: Sequence[float]) -> None:
        expires = time.monotonic() + 3600
        for key, score in zip(keys, scores):
            self._entries[key] = (score, expires)
            self._entries.move_to_end(key)


def request_keys(query: int, per_query: int) -> list[PairKey]:
    docs = [f"passage {query}-{i}: what the knowledge base says about question {query}" for i in range(per_query)]
    return pair_keys(GROUP_MODEL, "task", [f"question {query}"] * per_query, docs)


async def fill(cache: object, per_query: int, pairs: int) -> None:
    put: Callable[..., object] = cache.put_many  # type: ignore[attr-defined]
    for query in range(pairs // per_query):
        keys = request_keys(query, per_query)
        await put(keys, [0.5] * per_query)  # type: ignore[misc]


def retained_bytes(build: Callable[[], object], per_query: int, pairs: int) -> tuple[object, int]:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    cache = build()
    asyncio.run(fill(cache, per_query, pairs))
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return cache, used


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=PAIRS)
    parser.add_argument("--shapes", default="1,20,40,200,1000", help="passages per query, comma-separated")
    args = parser.parse_args(argv)
    figures: Figures = {}
    print(f"| passages per query | before, B/pair | after, B/pair | after, accounted B/pair | goal <= {GOAL_BYTES_PER_PAIR} |")
    print("| --- | --- | --- | --- | --- |")
    for per_query in (int(s) for s in args.shapes.split(",")):
        _, before = retained_bytes(PerPairLayout, per_query, args.pairs)
        cache, after = retained_bytes(lambda: MemoryScoreCache(max_bytes=1 << 40, ttl_seconds=3600), per_query, args.pairs)
        assert isinstance(cache, MemoryScoreCache)
        pairs = len(cache)
        accounted = cache.stored_bytes() or 0
        figures |= {f"passages{per_query}.before_bytes_per_pair": before / pairs,
                    f"passages{per_query}.after_bytes_per_pair": after / pairs}
        print(f"| {per_query} | {before / pairs:.1f} | {after / pairs:.1f} | {accounted / pairs:.1f} | "
              f"{'met' if after / pairs <= GOAL_BYTES_PER_PAIR else 'MISSED'} |")
    bounded, used = retained_bytes(lambda: MemoryScoreCache(max_bytes=BOUND_BYTES, ttl_seconds=3600), 20, args.pairs)
    assert isinstance(bounded, MemoryScoreCache)
    print(f"\nbound: max_bytes {BOUND_BYTES:,}, {args.pairs:,} pairs written at 20 per query: "
          f"{used:,} bytes measured, {bounded.stored_bytes():,} accounted, {len(bounded):,} pairs kept "
          f"({'held' if used <= BOUND_BYTES else 'EXCEEDED'})")
    return figures | {"bound.measured_bytes": used, "bound.max_bytes": BOUND_BYTES}
