"""The in-process cache's byte bound holds at 1,000,000 pairs, measured by tracemalloc, not by its own count."""

from __future__ import annotations

import asyncio
import gc
import random
import tracemalloc

import pytest

from gateway.cache.base import pair_keys
from gateway.cache.memory import MemoryScoreCache

MAX_BYTES = 8 * 1024 * 1024
PAIRS = 1_000_000


async def write_pairs(cache: MemoryScoreCache, rng: random.Random) -> int:
    written = query = 0
    while written < PAIRS:
        per_query = rng.choice((1, 5, 20, 40, 200))  # from a DeepInfra one-query-per-document call to a big page
        docs = [f"passage {query}-{i}" for i in range(per_query)]
        await cache.put_many(pair_keys("m@f1", None, [f"question {query}"] * per_query, docs), [0.5] * per_query)
        written, query = written + per_query, query + 1
    return written


@pytest.mark.slow
def test_the_byte_bound_holds_at_a_million_pairs():
    cache = MemoryScoreCache(max_bytes=MAX_BYTES, ttl_seconds=3600)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    written = asyncio.run(write_pairs(cache, random.Random(7)))
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert written >= PAIRS
    assert 0 < len(cache) < written  # it evicted, and kept what fits
    stored = cache.stored_bytes()
    assert stored is not None and stored <= MAX_BYTES
    assert used <= MAX_BYTES, f"{used:,} bytes allocated against a bound of {MAX_BYTES:,}"
    assert used >= MAX_BYTES // 2  # and the bound is not met by keeping next to nothing


async def test_metrics_and_status_show_the_in_process_cache_bytes(make_gateway):
    gateway = await make_gateway(fallback=["deepinfra"], cache={"max_bytes": 4 * 1024 * 1024})
    response = await gateway.post("/v1/rerank", json={"query": "q", "documents": ["a q", "b", "c q"]})
    assert response.status == 200
    metrics = await (await gateway.get("/metrics")).text()
    line = next(line for line in metrics.splitlines() if line.startswith("rerank_gateway_cache_bytes"))
    stored = float(line.split()[-1])
    assert 3 * 24 < stored < 4 * 1024 * 1024  # three pairs and their query's bucket
    page = await (await gateway.get("/status")).text()
    assert "MiB of 4 MiB (cache.max_bytes) in this process" in page
