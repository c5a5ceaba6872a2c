"""The Redis score cache: shared by every gateway instance, and never a reason to fail a request.

Layout: one hash per (model, instruction, query), field = 16-byte passage digest, value = the
score as an 8-byte IEEE double. A small hash is stored as a listpack (no per-field objects),
which is what brings a pair down to about 30 bytes; one key per pair would cost ~100. The key's
braces are a Cluster hash tag, so a query's scores always live on one node.

Every call is bounded by a short timeout; on any Redis failure the request is served uncached
(gateway/redis_outage.py decides when to leave Redis alone for a moment, and says so).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable, Sequence

from gateway.cache.base import PairKey, query_group
from gateway.redis_outage import RedisOutage
from gateway.redis_pool import REDIS_FAILURES, RedisClient, ping, redis_client, warm_up

log = logging.getLogger("gateway.cache")

_SCORE = struct.Struct("<d")
KEY_PREFIX = "rr:"
WARM_CONNECTIONS = 16


class RedisScoreCache:
    def __init__(
        self,
        client: RedisClient,
        ttl_seconds: int,
        timeout_seconds: float,
        retry_after_seconds: float = 1.0,
        warn_interval_seconds: float = 30.0,
        failures_before_backoff: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self._timeout = timeout_seconds
        self._outage = RedisOutage(
            log, "redis cache", "serving uncached", clock,
            retry_after_seconds, warn_interval_seconds, failures_before_backoff,
        )

    @classmethod
    def from_url(
        cls, url: str, ttl_seconds: int, timeout_seconds: float, max_connections: int = 32
    ) -> RedisScoreCache:
        return cls(redis_client(url, timeout_seconds, max_connections), ttl_seconds, timeout_seconds)

    async def start(self) -> None:
        await warm_up(self._redis, WARM_CONNECTIONS)

    @property
    def available(self) -> bool:
        return self._outage.available

    async def get_many(self, keys: Sequence[PairKey]) -> list[float | None]:
        misses: list[float | None] = [None] * len(keys)
        if not self.available:
            return misses
        groups = _group_by_query(keys)
        try:
            async with asyncio.timeout(self._timeout):
                replies = await self._read(groups)
        except REDIS_FAILURES as exc:
            self._outage.failed("read", exc)
            return misses
        self._outage.succeeded()
        found = misses
        for (fields, positions), values in zip(groups.values(), replies):
            for position, value in zip(positions, values):
                found[position] = _decode_score(value)
        return found

    async def _read(self, groups: dict[str, tuple[list[bytes], list[int]]]) -> list[list[bytes | None]]:
        if len(groups) == 1:
            # The common case, one query: a plain HMGET is one round trip without a pipeline's
            # bookkeeping, which costs a cached request measurably on the hit path.
            [(key, (fields, _))] = groups.items()
            return [await self._redis.hmget(key, fields)]
        # A cluster client may learn its layout on entering the pipeline: the caller's bound covers it.
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, (fields, _) in groups.items():
                pipe.hmget(key, fields)
            return await pipe.execute()

    async def put_many(self, keys: Sequence[PairKey], scores: Sequence[float]) -> None:
        if not self.available:
            return
        groups = _group_by_query(keys)
        try:
            async with asyncio.timeout(self._timeout), self._redis.pipeline(transaction=False) as pipe:
                for key, (fields, positions) in groups.items():
                    pipe.hset(key, mapping={f: _SCORE.pack(scores[p]) for f, p in zip(fields, positions)})
                    pipe.expire(key, self._ttl)
                await pipe.execute()
        except REDIS_FAILURES as exc:
            self._outage.failed("write", exc)
            return
        self._outage.succeeded()

    async def ping(self) -> bool:
        return await ping(self._redis, self._timeout)

    async def close(self) -> None:
        await self._redis.aclose()


def redis_key(model: str, instruction: str | None, query: str) -> str:
    """The hash holding every cached score of one query."""
    return _hash_name(query_group(model, instruction, query))


def _hash_name(group: str) -> str:
    # The braces make the whole group a Cluster hash tag.
    return f"{KEY_PREFIX}{{{group}}}"


def _group_by_query(keys: Sequence[PairKey]) -> dict[str, tuple[list[bytes], list[int]]]:
    """Redis hash name -> (passage digests, request positions), for each distinct query."""
    groups: dict[str, tuple[list[bytes], list[int]]] = {}
    for position, (group, digest) in enumerate(keys):
        entry = groups.get(group)
        if entry is None:
            entry = groups[group] = ([], [])
        entry[0].append(digest)
        entry[1].append(position)
    return {_hash_name(group): entry for group, entry in groups.items()}


def _decode_score(value: bytes | None) -> float | None:
    """A stored score, or None for a miss; anything malformed or out of range is a miss too."""
    if value is None or len(value) != _SCORE.size:
        return None
    (score,) = _SCORE.unpack(value)
    return score if 0.0 <= score <= 1.0 else None  # NaN fails both comparisons
