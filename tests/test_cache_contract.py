"""One contract for every score cache: memory, Redis (a real redis-server), fakeredis and a real Redis Cluster."""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import AsyncIterator

import fakeredis
import pytest
import redis.asyncio as aioredis

from gateway.cache import MemoryScoreCache, ScoreCache, pair_keys
from gateway.cache.base import passage_digest
from gateway.cache.redis import RedisScoreCache, redis_key

TTL = 3600
K = pair_keys


pytest_plugins = ["tests.redis_cluster"]


@pytest.fixture(params=["memory", "redis", "fakeredis", "redis-cluster"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[ScoreCache]:
    if request.param == "memory":
        built: ScoreCache = MemoryScoreCache(max_entries=10_000, ttl_seconds=TTL)
    elif request.param in ("redis", "redis-cluster"):
        url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
        built = RedisScoreCache.from_url(url, ttl_seconds=TTL, timeout_seconds=1.0)
    else:
        built = RedisScoreCache(fakeredis.FakeAsyncRedis(), ttl_seconds=TTL, timeout_seconds=1.0)
    yield built
    await built.close()


Q, R = "how much does it cost?", "where is it?"
DOCS = ["free", "25,000 rubles", "opens at 8:00", "mild weather"]


async def test_empty_cache_misses_everything(cache: ScoreCache):
    assert await cache.get_many(K("m", None, [Q] * 4, DOCS)) == [None] * 4


async def test_scores_come_back_exactly_where_they_were_put(cache: ScoreCache):
    scores = [0.9531, 1 / 3, 0.0, 1.0]
    await cache.put_many(K("m", None, [Q] * 4, DOCS), scores)
    assert await cache.get_many(K("m", None, [Q] * 4, DOCS)) == scores  # bit-exact, not approximate


async def test_partial_hits_land_in_the_right_places(cache: ScoreCache):
    await cache.put_many(K("m", None, [Q, Q], [DOCS[1], DOCS[3]]), [0.25, 0.75])
    assert await cache.get_many(K("m", None, [Q] * 4, DOCS)) == [None, 0.25, None, 0.75]


async def test_many_queries_in_one_call(cache: ScoreCache):
    await cache.put_many(K("m", None, [Q, R, Q], [DOCS[0], DOCS[0], DOCS[1]]), [0.1, 0.2, 0.3])
    assert await cache.get_many(K("m", None, [R, Q, R, Q], [DOCS[0], DOCS[0], DOCS[1], DOCS[1]])) == [0.2, 0.1, None, 0.3]


async def test_models_never_share_scores(cache: ScoreCache):
    await cache.put_many(K("model-a", None, [Q], [DOCS[0]]), [0.9])
    assert await cache.get_many(K("model-b", None, [Q], [DOCS[0]])) == [None]
    assert await cache.get_many(K("model-a", None, [Q], [DOCS[0]])) == [0.9]


async def test_instructions_are_part_of_the_key(cache: ScoreCache):
    await cache.put_many(K("m", None, [Q], [DOCS[0]]), [0.1])
    await cache.put_many(K("m", "", [Q], [DOCS[0]]), [0.2])
    await cache.put_many(K("m", "legal questions", [Q], [DOCS[0]]), [0.3])
    got = [await cache.get_many(K("m", instruction, [Q], [DOCS[0]])) for instruction in (None, "", "legal questions", "other")]
    assert got == [[0.1], [0.2], [0.3], [None]]


async def test_exact_text_no_normalization(cache: ScoreCache):
    await cache.put_many(K("m", None, [Q], ["Free"]), [0.5])
    assert await cache.get_many(K("m", None, [Q, Q, Q.upper()], ["Free", "free", "Free"])) == [0.5, None, None]


async def test_a_newer_score_replaces_the_older(cache: ScoreCache):
    await cache.put_many(K("m", None, [Q], [DOCS[0]]), [0.1])
    await cache.put_many(K("m", None, [Q], [DOCS[0]]), [0.7])
    assert await cache.get_many(K("m", None, [Q], [DOCS[0]])) == [0.7]


async def test_unicode_text(cache: ScoreCache):
    query, doc = "сколько стоит банкротство через МФЦ?", "Внесудебное банкротство через МФЦ бесплатно. 🧾"
    await cache.put_many(K("m", None, [query], [doc]), [0.8])
    assert await cache.get_many(K("m", None, [query], [doc])) == [0.8]


# --- what only one implementation has


async def test_memory_cache_is_bounded_least_recently_used_first():
    cache = MemoryScoreCache(max_entries=3, ttl_seconds=TTL)
    await cache.put_many(K("m", None, [Q] * 3, DOCS[:3]), [0.1, 0.2, 0.3])
    await cache.get_many(K("m", None, [Q], [DOCS[0]]))  # touch: DOCS[1] is now the oldest
    await cache.put_many(K("m", None, [Q], [DOCS[3]]), [0.4])
    assert len(cache) == 3
    assert await cache.get_many(K("m", None, [Q] * 4, DOCS)) == [0.1, None, 0.3, 0.4]


async def test_memory_cache_expires_after_the_ttl():
    now = [1000.0]
    cache = MemoryScoreCache(max_entries=10, ttl_seconds=60, clock=lambda: now[0])
    await cache.put_many(K("m", None, [Q], [DOCS[0]]), [0.5])
    now[0] += 59
    assert await cache.get_many(K("m", None, [Q], [DOCS[0]])) == [0.5]
    now[0] += 2
    assert await cache.get_many(K("m", None, [Q], [DOCS[0]])) == [None]


async def test_redis_layout_is_one_compact_hash_per_query_with_the_ttl(redis_url):
    cache = RedisScoreCache.from_url(redis_url, ttl_seconds=TTL, timeout_seconds=1.0)
    documents = [f"passage {i}" for i in range(40)]
    await cache.put_many(K("qwen3-reranker-8b", "task", [Q] * 40, documents), [i / 40 for i in range(40)])
    raw = aioredis.Redis.from_url(redis_url)
    key = redis_key("qwen3-reranker-8b", "task", Q)
    assert key.startswith("rr:{qwen3-reranker-8b:") and key.endswith("}")
    assert await raw.keys("*") == [key.encode()]
    assert await raw.hlen(key) == 40
    assert await raw.object("encoding", key) == b"listpack"
    assert 0 < await raw.ttl(key) <= TTL
    await raw.aclose()
    await cache.close()


@pytest.mark.parametrize("stored", [b"garbage", b"", struct.pack("<d", math.nan), struct.pack("<d", 1.5),
                                    struct.pack("<d", -0.1), struct.pack("<f", 0.5), b"0.5"])
async def test_corrupt_or_foreign_values_are_misses(redis_url, stored):
    cache = RedisScoreCache.from_url(redis_url, ttl_seconds=TTL, timeout_seconds=1.0)
    await cache.put_many(K("m", None, [Q, Q], DOCS[:2]), [0.25, 0.5])
    raw = aioredis.Redis.from_url(redis_url)
    await raw.hset(redis_key("m", None, Q), passage_digest(DOCS[0]), stored)
    assert await cache.get_many(K("m", None, [Q, Q], DOCS[:2])) == [None, 0.5]
    await raw.aclose()
    await cache.close()


async def test_a_key_of_the_wrong_type_is_a_miss_not_a_crash(redis_url):
    cache = RedisScoreCache.from_url(redis_url, ttl_seconds=TTL, timeout_seconds=1.0)
    raw = aioredis.Redis.from_url(redis_url)
    await raw.set(redis_key("m", None, Q), "a string, not a hash")
    assert await cache.get_many(K("m", None, [Q], [DOCS[0]])) == [None]
    await cache.put_many(K("m", None, [Q], [DOCS[0]]), [0.5])  # WRONGTYPE: logged, not raised
    await raw.aclose()
    await cache.close()


async def test_redis_down_means_uncached_not_failed(unused_tcp_port):
    cache = RedisScoreCache.from_url(f"redis://127.0.0.1:{unused_tcp_port}/0", ttl_seconds=TTL, timeout_seconds=0.2)
    assert await cache.get_many(K("m", None, [Q], [DOCS[0]])) == [None]
    await cache.put_many(K("m", None, [Q], [DOCS[0]]), [0.5])
    assert cache.available  # two failures: maybe a hiccup on a busy loop, keep trying
    assert await cache.get_many(K("m", None, [Q], [DOCS[0]])) == [None]
    assert not cache.available  # three in a row: backing off, the next calls do not even try
    await cache.close()


async def test_hung_redis_is_bounded_by_the_timeout():
    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cache = RedisScoreCache.from_url(f"redis://127.0.0.1:{port}/0", ttl_seconds=TTL, timeout_seconds=0.1)
    started = time.monotonic()
    assert await cache.get_many(K("m", None, [Q], [DOCS[0]])) == [None]
    elapsed = time.monotonic() - started
    server.close()
    await cache.close()
    assert elapsed < 5  # bounded, not hanging: the figure itself is not a performance claim


async def test_redis_is_used_again_once_it_is_back(tmp_path):
    from tests.redis_server import REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        pytest.skip("redis-server binary not found")
    server = RedisServer(tmp_path)
    now = [0.0]
    client = aioredis.Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    cache = RedisScoreCache(client, ttl_seconds=TTL, timeout_seconds=0.5, retry_after_seconds=1.0, clock=lambda: now[0])
    for _ in range(3):
        await cache.put_many(K("m", None, [Q], [DOCS[0]]), [0.5])  # not started yet: fails, backs off
    assert not cache.available
    server.start()
    try:
        now[0] += 1.5
        assert cache.available
        await cache.put_many(K("m", None, [Q], [DOCS[0]]), [0.5])
        assert await cache.get_many(K("m", None, [Q], [DOCS[0]])) == [0.5]
    finally:
        await cache.close()
        server.stop()


async def test_a_password_in_the_url_is_used(tmp_path):
    from tests.redis_server import REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        pytest.skip("redis-server binary not found")
    server = RedisServer(tmp_path, extra_args=["--requirepass", "s3cret"])
    server.start(password="s3cret")
    try:
        good = RedisScoreCache.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/0", ttl_seconds=TTL, timeout_seconds=1.0)
        await good.put_many(K("m", None, [Q], [DOCS[0]]), [0.5])
        assert await good.get_many(K("m", None, [Q], [DOCS[0]])) == [0.5]
        wrong = RedisScoreCache.from_url(f"redis://:wrong@127.0.0.1:{server.port}/0", ttl_seconds=TTL, timeout_seconds=1.0)
        for _ in range(3):
            assert await wrong.get_many(K("m", None, [Q], [DOCS[0]])) == [None]  # refused: a miss, not a crash
        assert not wrong.available
        await good.close()
        await wrong.close()
    finally:
        server.stop()


async def test_a_burst_beyond_the_pool_size_waits_for_connections_instead_of_failing(redis_url):
    cache = RedisScoreCache.from_url(redis_url, ttl_seconds=TTL, timeout_seconds=2.0, max_connections=8)
    await cache.put_many(K("m", None, [Q], [DOCS[0]]), [0.5])
    results = await asyncio.gather(*[cache.get_many(K("m", None, [Q], [DOCS[0]])) for _ in range(200)])
    assert results == [[0.5]] * 200
    assert cache.available
    await cache.close()
