"""One contract for every score cache: memory, Redis (a real redis-server), fakeredis and a real Redis Cluster."""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import cast

import fakeredis
import pytest
import redis
import redis.asyncio as aioredis

from gateway.cache import Lookup, MemoryScoreCache, PairKey, ScoreCache, pair_keys
from gateway.cache.base import passage_digest
from gateway.cache.memory import BUCKET_BYTES, PAIR_BYTES
from gateway.cache.redis import QUERY_HASH_FIELDS, SPILL_BUCKETS, RedisScoreCache, redis_key
from gateway.redisio.commands import ClientCommands, DirectConnections
from gateway.scoring.flights import await_elsewhere
from tests.support.hung_server import hung_server
from tests.support.polling import eventually
from tests.support.redis_server import CLUSTER, REDIS, RedisServer, own_redis_server
from tests.support.stall import stall_the_next_call

TTL = 3600
K = pair_keys


pytest_plugins = ["tests.support.redis_cluster"]


@pytest.fixture(params=["memory", REDIS, "fakeredis", CLUSTER])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[ScoreCache]:
    if request.param == "memory":
        built: ScoreCache = MemoryScoreCache(max_bytes=1 << 20, ttl_seconds=TTL)
    elif request.param in ("redis", "redis-cluster"):
        url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
        built = RedisScoreCache.from_url(url, ttl_seconds=TTL, timeout_seconds=1.0)
    else:
        if not _fakeredis_runs_lua():
            pytest.skip("fakeredis runs the cache's Lua scripts only with lupa installed (fakeredis[lua])")
        built = RedisScoreCache(ClientCommands(fakeredis.FakeAsyncRedis()), ttl_seconds=TTL, timeout_seconds=1.0)
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


async def test_memory_cache_is_bounded_by_pairs_least_recently_used_query_first():
    cache = MemoryScoreCache(max_bytes=1 << 20, ttl_seconds=TTL, max_entries=3)
    await cache.put_many(K("m", None, ["q1", "q2", "q3"], DOCS[:3]), [0.1, 0.2, 0.3])
    await cache.get_many(K("m", None, ["q1"], [DOCS[0]]))  # touch: q2 is now the oldest
    await cache.put_many(K("m", None, ["q4"], [DOCS[3]]), [0.4])
    assert len(cache) == 3
    assert await cache.get_many(K("m", None, ["q1", "q2", "q3", "q4"], DOCS)) == [0.1, None, 0.3, 0.4]


async def test_memory_cache_is_bounded_by_bytes_whole_queries_at_a_time():
    one_query = BUCKET_BYTES + len(K("m", None, ["q0"], [""])[0][0]) + 20 * PAIR_BYTES
    cache = MemoryScoreCache(max_bytes=3 * one_query, ttl_seconds=TTL)
    docs = [f"passage {i}" for i in range(20)]
    for query in ("q0", "q1", "q2", "q3"):
        await cache.put_many(K("m", None, [query] * 20, docs), [0.5] * 20)
    assert cache.stored_bytes() == 3 * one_query and len(cache) == 60
    assert await cache.get_many(K("m", None, ["q0", "q1", "q3"], docs[:3])) == [None, 0.5, 0.5]


async def test_memory_cache_finds_a_passage_only_at_a_pair_boundary():
    # A digest's bytes may also stand across a neighbour's digest and score: only a pair's own offset counts.
    cache = MemoryScoreCache(max_bytes=1 << 20, ttl_seconds=TTL)
    group = "m:q"
    first, second = bytes(range(16)), bytes(range(100, 116))
    straddling = first[8:] + bytes(8)  # the tail of `first` and the head of its score (0.0)
    await cache.put_many([(group, first), (group, second)], [0.0, 0.7])
    assert await cache.get_many([(group, straddling), (group, second), (group, first)]) == [None, 0.7, 0.0]
    await cache.put_many([(group, second)], [0.9])  # a rewrite replaces, it does not append
    assert len(cache) == 2 and await cache.get_many([(group, second)]) == [0.9]


async def test_memory_cache_expires_after_the_ttl():
    now = [1000.0]
    cache = MemoryScoreCache(max_bytes=1 << 20, ttl_seconds=60, clock=lambda: now[0])
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
    async with hung_server() as port:
        cache = RedisScoreCache.from_url(f"redis://127.0.0.1:{port}/0", ttl_seconds=TTL, timeout_seconds=0.1)
        started = time.monotonic()
        assert await cache.get_many(K("m", None, [Q], [DOCS[0]])) == [None]
        elapsed = time.monotonic() - started
        await cache.close()
    assert elapsed < 5  # bounded, not hanging: the figure itself is not a performance claim


async def test_a_call_cut_by_this_process_stalling_is_not_held_against_redis(redis_url):
    cache = RedisScoreCache.from_url(redis_url, ttl_seconds=TTL, timeout_seconds=0.1)
    await cache.start()
    keys = K("m", None, [Q], [DOCS[0]])
    with redis.Redis.from_url(redis_url) as server:
        for _ in range(5):
            stall_the_next_call(0.3, [server])
            assert await cache.get_many(keys) == [None]  # cut by its bound: served uncached
    assert cache.available  # five overruns, none Redis' doing: no back-off
    await cache.close()


@own_redis_server
async def test_redis_is_used_again_once_it_is_back(tmp_path):
    server = RedisServer(tmp_path)
    now = [0.0]
    client = aioredis.Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    cache = RedisScoreCache(DirectConnections(client, 4), ttl_seconds=TTL, timeout_seconds=0.5,
                            retry_after_seconds=1.0, clock=lambda: now[0])
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


@own_redis_server
async def test_a_password_in_the_url_is_used(tmp_path):
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



# --- leases: single flight across processes (each RedisScoreCache stands for one process) ----


def _fakeredis_runs_lua() -> bool:
    try:
        import lupa  # noqa: F401
    except ImportError:
        return False
    return True


Store = Callable[..., RedisScoreCache]


@pytest.fixture(params=[REDIS, "fakeredis", CLUSTER])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Builds caches on one store, each with a lease owner of its own, as separate processes have."""
    built: list[RedisScoreCache] = []
    if request.param == "fakeredis" and not _fakeredis_runs_lua():
        pytest.skip("fakeredis runs Lua only with lupa installed")
    server = fakeredis.FakeServer()
    url = None if request.param == "fakeredis" else request.getfixturevalue(
        "redis_url" if request.param == "redis" else "redis_cluster_url")

    def build(lease_seconds: float = 30.0) -> RedisScoreCache:
        if url is None:
            cache = RedisScoreCache(ClientCommands(fakeredis.FakeAsyncRedis(server=server)), TTL, 1.0, lease_seconds)
        else:
            cache = RedisScoreCache.from_url(url, TTL, timeout_seconds=1.0, lease_seconds=lease_seconds)
        built.append(cache)
        return cache

    yield build
    for cache in built:
        await cache.close()


class CountingLookups:
    """A cache whose lookups are counted, so a test knows the waiter has polled rather than guessing from a sleep."""

    def __init__(self, cache: ScoreCache) -> None:
        self.cache = cache
        self.lookups = 0

    async def lookup(self, keys: Sequence[PairKey], deadline: float | None = None) -> Lookup:
        self.lookups += 1
        return await self.cache.lookup(keys, deadline)


PAIRS = K("m", None, [Q] * 4, DOCS)
SCORES = [0.9531, 1 / 3, 0.0, 1.0]
NO_WAIT_PAST = 10.0  # seconds: a wait test that gets this far waited for `until`, not for a lease


def _until(seconds: float = 60.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_two_claimers_of_one_pair_one_owns_the_other_waits_for_its_score(store: Store):
    owner, other = store(), store()
    first = await owner.lookup(PAIRS)
    assert first.scores == [None] * 4 and first.elsewhere == frozenset()  # leased to the owner
    second = await other.lookup(PAIRS)
    assert second.scores == [None] * 4 and second.elsewhere == frozenset(range(4))
    polled = CountingLookups(other)
    waiting = asyncio.ensure_future(await_elsewhere(cast(ScoreCache, polled), PAIRS, _until(), None))
    # A second poll started: the first found the pairs still leased elsewhere and the waiter kept waiting.
    await eventually(lambda: polled.lookups >= 2, what="the waiter polling again")
    assert not waiting.done()
    await owner.put_many(PAIRS, SCORES)
    assert await asyncio.wait_for(waiting, NO_WAIT_PAST) == SCORES


async def test_a_process_reading_its_own_leases_again_is_granted_them(store: Store):
    # Which of its requests scores a pair is for the process's own single flight to decide.
    cache = store()
    await cache.lookup(PAIRS)
    assert (await cache.lookup(PAIRS)).elsewhere == frozenset()


async def test_a_plain_read_claims_nothing(store: Store):
    reader, other = store(), store()
    assert await reader.get_many(PAIRS) == [None] * 4
    assert (await other.lookup(PAIRS)).elsewhere == frozenset()


async def test_an_owner_that_dies_holds_its_pairs_only_until_its_lease_runs_out(store: Store):
    owner, waiter = store(lease_seconds=0.3), store()
    await owner.lookup(PAIRS)  # ... and never writes: the process died
    assert (await waiter.lookup(PAIRS)).elsewhere == frozenset(range(4))
    found = await asyncio.wait_for(await_elsewhere(waiter, PAIRS, _until(), None), NO_WAIT_PAST)
    assert found == [None] * 4  # score them yourself ...
    assert (await owner.lookup(PAIRS)).elsewhere == frozenset(range(4))  # ... under your own lease now


@pytest.mark.slow
async def test_an_owner_still_scoring_keeps_its_leases_past_their_length(store: Store):
    # Renewed every half lease: a lease of 1 s leaves half a second for a busy machine's stalls.
    owner, waiter = store(lease_seconds=1.0), store()
    await owner.lookup(PAIRS)
    kept = owner.keep_leases(PAIRS, deadline=None)  # a provider call slower than the lease
    try:
        await asyncio.sleep(2.2)  # more than two leases long
        assert (await waiter.lookup(PAIRS)).elsewhere == frozenset(range(4))  # still the owner's
        polled = CountingLookups(waiter)
        waiting = asyncio.ensure_future(await_elsewhere(cast(ScoreCache, polled), PAIRS, _until(), None))
        await eventually(lambda: polled.lookups >= 2, what="the waiter polling again")  # it waits, not scores
        await owner.put_many(PAIRS, SCORES)
    finally:
        kept.stop()
    assert await asyncio.wait_for(waiting, NO_WAIT_PAST) == SCORES  # waited for them: paid once


async def test_renewing_never_brings_back_a_lease_that_ended(store: Store):
    owner, other = store(lease_seconds=0.3), store()
    await owner.lookup(PAIRS)
    await owner.release(PAIRS[:2])
    await owner.put_many(PAIRS[2:], SCORES[2:])
    await owner.renew(PAIRS, 30_000)
    found = await other.lookup(PAIRS)
    assert found.scores == [None, None, *SCORES[2:]] and found.elsewhere == frozenset()  # free to claim


async def test_renewing_stops_at_the_owners_deadline(store: Store):
    owner, waiter = store(lease_seconds=0.2), store()
    await owner.lookup(PAIRS, deadline=_until(0.5))
    kept = owner.keep_leases(PAIRS, deadline=_until(0.5))
    try:
        found = await asyncio.wait_for(await_elsewhere(waiter, PAIRS, _until(), None), NO_WAIT_PAST)
        assert found == [None] * 4  # the owner's deadline passed: the waiter scores them
    finally:
        kept.stop()


async def test_an_owner_whose_call_failed_releases_and_the_waiter_takes_over_at_once(store: Store):
    owner, waiter = store(lease_seconds=60.0), store()
    await owner.lookup(PAIRS)
    assert (await waiter.lookup(PAIRS)).elsewhere == frozenset(range(4))
    waiting = asyncio.ensure_future(await_elsewhere(waiter, PAIRS, _until(), None))
    await owner.release(PAIRS[:2])
    await owner.put_many(PAIRS[2:], SCORES[2:])
    assert await asyncio.wait_for(waiting, NO_WAIT_PAST) == [None, None, *SCORES[2:]]


async def test_a_lease_ends_at_its_owners_deadline(store: Store):
    owner, waiter = store(lease_seconds=60.0), store()
    await owner.lookup(PAIRS, deadline=_until(0.3))  # the owner cannot score past its deadline
    assert (await waiter.lookup(PAIRS)).elsewhere == frozenset(range(4))
    assert await asyncio.wait_for(await_elsewhere(waiter, PAIRS, _until(), None), NO_WAIT_PAST) == [None] * 4


async def test_waiting_stops_at_until_while_the_owner_still_holds_the_lease(store: Store):
    owner, waiter = store(lease_seconds=60.0), store()
    await owner.lookup(PAIRS)
    assert await asyncio.wait_for(await_elsewhere(waiter, PAIRS, _until(0.2), None), NO_WAIT_PAST) == [None] * 4
    assert (await waiter.lookup(PAIRS)).elsewhere == frozenset(range(4))  # still the owner's


async def test_a_write_ends_only_the_writers_leases(store: Store):
    owner, other = store(), store()
    await owner.lookup(PAIRS)
    await other.release(PAIRS)  # not its leases: nothing happens
    assert (await other.lookup(PAIRS)).elsewhere == frozenset(range(4))
    await owner.put_many(PAIRS, SCORES)
    assert (await other.lookup(PAIRS)).scores == SCORES


async def test_memory_cache_grants_every_claim():
    cache = MemoryScoreCache(max_bytes=1 << 20, ttl_seconds=TTL)
    assert (await cache.lookup(PAIRS)).elsewhere == frozenset()
    assert (await cache.lookup(PAIRS)).elsewhere == frozenset()
    await cache.release(PAIRS)
    await cache.put_many(PAIRS, SCORES)
    assert (await cache.lookup(PAIRS)).scores == SCORES


async def test_redis_down_grants_every_claim_so_requests_score_themselves(unused_tcp_port):
    cache = RedisScoreCache.from_url(f"redis://127.0.0.1:{unused_tcp_port}/0", ttl_seconds=TTL, timeout_seconds=0.2)
    found = await cache.lookup(PAIRS)
    assert found.scores == [None] * 4 and found.elsewhere == frozenset()
    await cache.release(PAIRS)  # logged, not raised
    await cache.close()


# --- past one listpack: a query's scores spill into buckets under its hash tag -------------


def _many(count: int, tag: str = "") -> list[str]:
    return [f"passage {tag}{i}" for i in range(count)]


async def test_a_thousand_passages_of_one_query_come_back_exactly(store: Store):
    cache = store()
    documents = _many(1500)  # past 1000 too: the script reads in chunks Lua's stack can take
    scores = [i / 1500 for i in range(1500)]
    await cache.put_many(K("m", None, [Q] * 1500, documents[:700]), scores[:700])
    await cache.put_many(K("m", None, [Q] * 1500, documents[700:]), scores[700:])
    assert await cache.get_many(K("m", None, [Q] * 1500, documents)) == scores
    assert await cache.get_many(K("m", None, [R] * 3, documents[:3])) == [None] * 3


async def test_a_query_past_its_hash_spills_into_listpack_buckets_in_one_slot(redis_url):
    cache = RedisScoreCache.from_url(redis_url, ttl_seconds=TTL, timeout_seconds=1.0)
    await cache.put_many(K("m", "task", [Q] * 1000, _many(1000)), [0.5] * 1000)
    raw = aioredis.Redis.from_url(redis_url)
    key = redis_key("m", "task", Q)
    buckets = [f"{key}:{b}" for b in range(SPILL_BUCKETS)]
    assert sorted(await raw.keys("*")) == sorted(k.encode() for k in [key, *buckets])
    assert await raw.hlen(key) == QUERY_HASH_FIELDS
    assert sum([await raw.hlen(b) for b in buckets]) == 1000 - QUERY_HASH_FIELDS
    for name in [key, *buckets]:
        assert await raw.object("encoding", name) == b"listpack"
        assert 0 < await raw.ttl(name) <= TTL
    await raw.aclose()
    await cache.close()


async def test_a_spilled_query_lives_on_one_cluster_node(redis_cluster, redis_cluster_url):
    cache = RedisScoreCache.from_url(redis_cluster_url, ttl_seconds=TTL, timeout_seconds=1.0)
    await cache.lookup(K("m", None, [Q] * 1000, _many(1000, "x")))  # leases too
    await cache.put_many(K("m", None, [Q] * 999, _many(999)), [0.5] * 999)
    nodes_holding = [keys for keys in redis_cluster.keys_per_node() if keys]
    assert len(nodes_holding) == 1 and len(nodes_holding[0]) == 2 + SPILL_BUCKETS
    await cache.close()


async def test_keys_of_the_old_layout_still_hit_and_a_newer_score_still_replaces_the_older(redis_url):
    # Before buckets, one hash held all of a query's passages, past 512 as a hash table.
    raw = aioredis.Redis.from_url(redis_url)
    documents = _many(600)
    key = redis_key("m", None, Q)
    await raw.hset(key, mapping={passage_digest(d): struct.pack("<d", 0.25) for d in documents})
    cache = RedisScoreCache.from_url(redis_url, ttl_seconds=TTL, timeout_seconds=1.0)
    assert await cache.get_many(K("m", None, [Q] * 600, documents)) == [0.25] * 600
    await cache.put_many(K("m", None, [Q] * 2, [documents[0], "a new passage"]), [0.75, 0.5])
    assert await cache.get_many(K("m", None, [Q] * 3, [documents[0], documents[1], "a new passage"])) == [0.75, 0.25, 0.5]
    assert await raw.hlen(key) == 600  # the new passage went to a bucket; the old one was rewritten in place
    await raw.aclose()
    await cache.close()


async def test_a_passage_lives_in_one_place_so_a_newer_score_always_wins(redis_url):
    cache = RedisScoreCache.from_url(redis_url, ttl_seconds=TTL, timeout_seconds=1.0)
    documents = _many(QUERY_HASH_FIELDS + 50)
    await cache.put_many(K("m", None, [Q] * len(documents), documents), [0.5] * len(documents))
    raw = aioredis.Redis.from_url(redis_url)
    spilled = documents[-1]
    await raw.hdel(redis_key("m", None, Q), passage_digest(documents[0]))  # room again in the query's hash
    await cache.put_many(K("m", None, [Q], [spilled]), [0.875])  # where it already is: its bucket
    assert await cache.get_many(K("m", None, [Q], [spilled])) == [0.875]
    assert await raw.hexists(redis_key("m", None, Q), passage_digest(spilled)) == 0
    await raw.aclose()
    await cache.close()


async def test_scripts_flushed_from_redis_are_loaded_again(store: Store):
    cache = store()
    await cache.put_many(PAIRS, SCORES)
    # A restarted or new node knows no scripts (a cluster client flushes every primary).
    commands = cache._redis
    if isinstance(commands, ClientCommands):
        await commands.client.script_flush()
    else:
        await commands.execute([("SCRIPT", "FLUSH")])
    assert await cache.get_many(K("m", None, [Q, R, Q, Q], DOCS)) == [SCORES[0], None, *SCORES[2:]]
    assert cache.available
