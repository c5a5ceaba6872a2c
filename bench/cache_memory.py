"""Score cache, table 2: Redis memory per cached pair, written by the gateway's own cache code.

Each shape gets a fresh redis-server; `INFO memory` used_memory is read before and after
writing the pairs through `RedisScoreCache.put_many` (one call per query, as one request's
fresh scores are written), so the figure includes everything a pair really costs: the
hash's share of its key, its TTL entry, and the allocator's rounding. A query past
QUERY_HASH_FIELDS passages spills into buckets: their keys and TTLs are counted too.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.harness import GATEWAY_MODEL, Pinning, ProcessGroup, fmt, markdown, redis_url, start_redis, verdict
from gateway.cache import pair_keys  # importable from a checkout once harness is imported
from gateway.cache.redis import QUERY_HASH_FIELDS, RedisScoreCache, score_keys

BYTES_PER_PAIR_LIMIT = 64
TTL_SECONDS = 30 * 24 * 3600  # the gateway's default cache.ttl_seconds: every hash gets one
WRITE_TIMEOUT_S = 5.0
CONCURRENT_WRITES = 32
SECTION_TIMEOUT_S = 300.0
NOTES = ("used_memory delta: Redis' allocated bytes after minus before writing, over the pairs written "
         "(key names, TTL entries and allocator rounding included). A pair in a listpack is its 16-byte "
         "digest and 8-byte score plus 2 bytes of framing each; past hash-max-listpack-entries fields (here "
         "{limit}, redis-server's built-in default) or a value over 64 bytes, Redis converts the hash to a "
         "hashtable, where every field and value is its own allocation. So the gateway keeps a query's first "
         "{query_hash} passages in its hash and spills the rest into buckets picked by passage digest, all under "
         "the query's hash tag; the encoding column lists each hash of one query. A query keeps collecting "
         "passages as its candidates change, for as long as the TTL keeps it.")


@dataclass(frozen=True)
class Shape:
    passages_per_query: int
    why: str


SHAPES = (
    Shape(20, "one KB call's candidates"),
    Shape(40, "a query seen a few times"),
    Shape(200, "a much-repeated query"),
    Shape(1000, "server.max_documents in one request"),
)


@dataclass(frozen=True)
class MemoryRow:
    shape: Shape
    queries: int
    pairs: int
    used_before: int
    used_after: int
    encoding: str  # of each hash of one query, e.g. "listpack x9"
    sample_key_bytes: int  # MEMORY USAGE of one query's hashes, all their fields
    listpack_limit: int  # this server's hash-max-listpack-entries

    @property
    def bytes_per_pair(self) -> float:
        return (self.used_after - self.used_before) / self.pairs


def run_memory_section(pairs: int, pinning: Pinning, workdir: Path) -> tuple[str, dict[str, float]]:
    rows = [_measure_shape(shape, pairs, pinning, workdir) for shape in SHAPES]
    limits = sorted({row.listpack_limit for row in rows})
    text = "\n\n".join([render_table(rows), NOTES.format(limit=", ".join(map(str, limits)), query_hash=QUERY_HASH_FIELDS)])
    return text, {f"passages{row.shape.passages_per_query}.bytes_per_pair": row.bytes_per_pair for row in rows}


def _measure_shape(shape: Shape, pairs: int, pinning: Pinning, workdir: Path) -> MemoryRow:
    queries = pairs // shape.passages_per_query
    with ProcessGroup(workdir) as group:  # a fresh server per shape: nothing left from the last
        server = start_redis(group, pinning.emulator, name=f"redis-{shape.passages_per_query}")
        group.wait_ready()
        with redis.Redis(port=server.port) as client:
            before = _used_memory(client)
            asyncio.run(asyncio.wait_for(_write(redis_url(server), queries, shape.passages_per_query),
                                         SECTION_TIMEOUT_S))
            after = _used_memory(client)
            _check_written(client, queries, shape.passages_per_query)
            sample = [key for key in score_keys(GATEWAY_MODEL, None, _query(0)) if client.exists(key)]
            encoding = _encodings(client, sample)
            sample_bytes = sum(int(client.memory_usage(key, samples=0) or 0) for key in sample)
            limit = int(client.config_get("hash-max-listpack-entries")["hash-max-listpack-entries"])
    return MemoryRow(shape, queries, queries * shape.passages_per_query, before, after, encoding, sample_bytes,
                     limit)


def _check_written(client: redis.Redis, queries: int, passages: int) -> None:
    """put_many logs and swallows Redis failures (by design); here they would skew the figure."""
    keys = list(client.scan_iter(count=1000))
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hlen(key)
        fields = sum(pipe.execute())
    last = sum(int(client.hlen(key)) for key in score_keys(GATEWAY_MODEL, None, _query(queries - 1)))
    if fields != queries * passages or last != passages:
        raise RuntimeError(f"memory: expected {queries} queries of {passages} pairs, found {fields} pairs in "
                           f"{len(keys)} hashes (the last query with {last})")


def _encodings(client: redis.Redis, keys: Sequence[str]) -> str:
    """Each hash's encoding, counted: "listpack x9"."""
    found = [client.object("ENCODING", key) for key in keys]
    names = [name.decode() if isinstance(name, bytes) else str(name) for name in found]
    return ", ".join(f"{name} x{names.count(name)}" for name in sorted(set(names)))


def _used_memory(client: redis.Redis) -> int:
    # The same short-lived client reads before and after, so its own buffers cancel out.
    return int(client.info("memory")["used_memory"])


def _query(i: int) -> str:
    return f"query {i}: how much does bankruptcy through the MFC cost"


async def _write(url: str, queries: int, passages: int) -> None:
    """Every query's pairs through the gateway's own code: keys from pair_keys, one put_many each."""
    cache = RedisScoreCache.from_url(url, TTL_SECONDS, WRITE_TIMEOUT_S)
    rng = random.Random(1)
    semaphore = asyncio.Semaphore(CONCURRENT_WRITES)

    async def put(i: int) -> None:
        documents = [f"passage {i}.{j}" for j in range(passages)]  # only the 16-byte digest is stored
        keys = pair_keys(GATEWAY_MODEL, None, [_query(i)] * passages, documents)
        async with semaphore:
            await cache.put_many(keys, [rng.random() for _ in range(passages)])

    try:
        await asyncio.gather(*(put(i) for i in range(queries)))
    finally:
        await cache.close()


def render_table(rows: Sequence[MemoryRow]) -> str:
    table = [["passages per query", "queries", "pairs", "hash encoding", "used_memory delta",
              "bytes per pair", "MEMORY USAGE of one query's hashes ÷ its pairs", f"≤ {BYTES_PER_PAIR_LIMIT} B/pair"]]
    for row in rows:
        table.append([f"{row.shape.passages_per_query} ({row.shape.why})", f"{row.queries:,}", f"{row.pairs:,}",
                      row.encoding, f"{row.used_after - row.used_before:,} B", fmt(row.bytes_per_pair, 1),
                      fmt(row.sample_key_bytes / row.shape.passages_per_query, 1),
                      verdict(row.bytes_per_pair <= BYTES_PER_PAIR_LIMIT)])
    return markdown(table)

