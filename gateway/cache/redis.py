"""The Redis score cache: shared by every gateway instance, and never a reason to fail a request.

Layout: one hash per (model, instruction, query), field = 16-byte passage digest, value = the
score as an 8-byte IEEE double. A small hash is stored as a listpack (no per-field objects),
which is what brings a pair down to about 30 bytes; one key per pair would cost ~100. Past
QUERY_HASH_FIELDS passages a query spills into SPILL_BUCKETS more hashes picked by digest, so
none outgrows a listpack (a hash table costs ~90 bytes a pair). The key's braces are a Cluster
hash tag, so all of a query's keys (scores, buckets, leases) live in one slot, on one node, and
each query is one script call. The scripts are in gateway/cache/scripts.py.

Leases: a read also claims the missing pairs for this process, in the same call, unless another
process holds them; that one is scoring them, and the caller waits for its scores
(gateway/scoring/flights.py) instead of paying too. The write ends the leases. A lease runs out by
itself after `lease_seconds`, so an owner that died costs its waiters that long at most; an owner
still scoring renews its leases every half lease (keep_leases), so a slow provider call does not
let waiters take its pairs over and pay for them too. An owner that stores nothing (its call
failed, its write was skipped or failed) releases its leases; a release Redis did not take (it
was away, or left alone for a moment) is tried again every RELEASE_RETRY_SECONDS in the
background until it is, or the lease has run out anyway, so that waiters, here or elsewhere,
take the pairs over within about that long of Redis answering again.

Every call is bounded by a short timeout; on any Redis failure the request is served uncached
(gateway/redisio/outage.py decides when to leave Redis alone for a moment, and says so). On a
Cluster a failing node costs only the queries whose keys it owns: they are misses, the rest of
the request is read and written as usual, and only that node is left alone for a moment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import TryAgainError

from gateway.cache.base import LeaseKeeper, Lookup, PairKey, query_group
from gateway.cache.scripts import LOOKUP, PUT, RELEASE, RENEW
from gateway.redisio.client import REDIS_FAILURES
from gateway.redisio.cluster import NodeFailure
from gateway.redisio.commands import Commands, Script, ScriptCall, commands_for, run_scripts_each
from gateway.redisio.outage import RedisOutage

log = logging.getLogger("gateway.cache")

_SCORE = struct.Struct("<d")
KEY_PREFIX = "rr:"
WARM_CONNECTIONS = 16
# A query's own hash takes this many passages, then spills into its buckets. Below Redis'
# default hash-max-listpack-entries (512), with room for the few a race may add past it.
QUERY_HASH_FIELDS = 448
# Enough for a query to collect ~4,500 passages over its TTL before a bucket outgrows a listpack,
# and few enough that a small query's read names only a handful of keys.
SPILL_BUCKETS = 8
_BUCKET_SUFFIXES = tuple(f":{bucket}" for bucket in range(SPILL_BUCKETS))
_LEASES_SUFFIX = ":leases"
DEFAULT_LEASE_SECONDS = 5.0
# How often a release Redis did not take is tried again: about how long after Redis answers again
# a waiter goes on with the pairs.
RELEASE_RETRY_SECONDS = 0.1
_LOOKUP, _PUT, _RELEASE, _RENEW = Script(LOOKUP), Script(PUT), Script(RELEASE), Script(RENEW)


class RedisScoreCache:
    def __init__(
        self,
        commands: Commands,
        ttl_seconds: int,
        timeout_seconds: float,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retry_after_seconds: float = 1.0,
        warn_interval_seconds: float = 30.0,
        failures_before_backoff: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = commands
        self._ttl = ttl_seconds
        self._timeout = timeout_seconds
        self._lease = lease_seconds
        # This process's name on its leases: a process re-reading a pair it leased is granted it
        # again, and its single flight (gateway/scoring/flights.py) decides which request scores it.
        self._owner = os.urandom(8).hex()
        self._outage = RedisOutage(
            log, "redis cache", "serving uncached", clock,
            retry_after_seconds, warn_interval_seconds, failures_before_backoff,
        )
        # Leases a release did not end, each with the loop time it runs out by itself.
        self._unreleased: dict[PairKey, float] = {}
        self._releasing: asyncio.Task[None] | None = None

    @classmethod
    def from_url(
        cls, url: str, ttl_seconds: int, timeout_seconds: float, max_connections: int = 32,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> RedisScoreCache:
        return cls(commands_for(url, timeout_seconds, max_connections), ttl_seconds, timeout_seconds, lease_seconds)

    async def start(self) -> None:
        self._outage.lag.start()
        await self._redis.warm_up(WARM_CONNECTIONS)

    @property
    def available(self) -> bool:
        return self._outage.available

    async def get_many(self, keys: Sequence[PairKey]) -> list[float | None]:
        return (await self._lookup(keys, 0)).scores

    async def lookup(self, keys: Sequence[PairKey], deadline: float | None = None) -> Lookup:
        return await self._lookup(keys, self._lease_ms(deadline))

    def _lease_ms(self, deadline: float | None) -> int:
        # A lease past its owner's deadline would only keep waiters waiting for nothing.
        lease = self._lease
        if deadline is not None:
            lease = min(lease, deadline - asyncio.get_running_loop().time())
        return max(1, int(lease * 1000))

    async def _lookup(self, keys: Sequence[PairKey], lease_ms: int) -> Lookup:
        misses = Lookup([None] * len(keys))
        if not self.available:
            return misses
        groups = _group_by_query(keys)
        calls: list[ScriptCall] = [
            (_LOOKUP, _query_keys(group), [self._owner, lease_ms, *digests]) for group, (digests, _) in groups.items()
        ]
        replies = await self._run("read", calls)
        if replies is None:
            return misses
        migrating = [i for i, reply in enumerate(replies) if isinstance(reply, TryAgainError)]
        if migrating:
            names = list(groups)
            for i, values in zip(migrating, await self._hashes_alone([(names[i], groups[names[i]][0]) for i in migrating])):
                replies[i] = values
        scores = misses.scores
        elsewhere = []
        for (_, positions), values in zip(groups.values(), replies):
            if values is None or isinstance(values, BaseException):
                continue  # its node failed (logged by _run): this query's pairs are misses
            for position, value in zip(positions, values):
                if isinstance(value, bytes):
                    scores[position] = _decode_score(value)
                elif value:  # the ms left on another process's lease; 0 = leased to us
                    elsewhere.append(position)
        return Lookup(scores, frozenset(elsewhere))

    async def _hashes_alone(self, queries: list[tuple[str, list[bytes]]]) -> list[Any]:
        """The scores in these queries' hashes, read by naming the hash alone, claiming nothing.

        For a query whose slot is being migrated: the lookup names ten keys, most of which do not
        exist, so while the slot moves the node answers TRYAGAIN (keys split between two nodes)
        for as long as the migration lasts. One key is on one node whole: its scores are read there
        (a spilled query's later passages are misses meanwhile).
        """
        try:
            async with asyncio.timeout(self._timeout):
                return await self._redis.execute_each([("HMGET", _hash_name(group), *digests) for group, digests in queries])
        except REDIS_FAILURES:
            return [None] * len(queries)  # misses, as the lookup already said

    async def put_many(self, keys: Sequence[PairKey], scores: Sequence[float]) -> bool:
        if not self.available:
            return False
        calls: list[ScriptCall] = []
        for group, (digests, positions) in _group_by_query(keys).items():
            args: list[bytes | int | str] = [self._owner, self._ttl, QUERY_HASH_FIELDS]
            for digest, position in zip(digests, positions):
                args += (digest, _SCORE.pack(scores[position]))
            calls.append((_PUT, _query_keys(group), args))
        replies = await self._run("write", calls)
        return replies is not None and _all_answered(replies)

    async def release(self, keys: Sequence[PairKey]) -> None:
        if not await self._on_own_leases("release", _RELEASE, keys):
            self._release_later(keys)

    def _release_later(self, keys: Sequence[PairKey]) -> None:
        # A lease asked for now would not outlast this; one granted earlier runs out sooner.
        runs_out = asyncio.get_running_loop().time() + self._lease
        self._unreleased.update(dict.fromkeys(keys, runs_out))
        if self._releasing is None or self._releasing.done():
            self._releasing = asyncio.ensure_future(self._retry_releases())

    async def _retry_releases(self) -> None:
        """Releases Redis did not take, tried again until it does or their leases have run out.

        Not held back by the outage's back-off, which spares requests the wait for a failing Redis:
        no request waits for this, and a waiter elsewhere waits for it.
        """
        loop = asyncio.get_running_loop()
        while self._unreleased:
            await asyncio.sleep(RELEASE_RETRY_SECONDS)
            now = loop.time()
            self._unreleased = {key: runs_out for key, runs_out in self._unreleased.items() if runs_out > now}
            keys = list(self._unreleased)
            try:
                async with asyncio.timeout(self._timeout):
                    replies = await run_scripts_each(self._redis, self._lease_calls(_RELEASE, keys))
            except REDIS_FAILURES:
                continue
            if _all_answered(replies):
                for key in keys:
                    self._unreleased.pop(key, None)

    def keep_leases(self, keys: Sequence[PairKey], deadline: float | None) -> LeaseKeeper:
        return _LeaseRenewal(self, keys, deadline)

    async def renew(self, keys: Sequence[PairKey], lease_ms: int) -> None:
        """Extend this process's leases on these keys to `lease_ms` from now (see scripts.RENEW)."""
        await self._on_own_leases("renew", _RENEW, keys, lease_ms)

    async def _on_own_leases(self, operation: str, script: Script, keys: Sequence[PairKey], *args: int) -> bool:
        """Run a script on this process's leases of these keys; whether every query's call ran."""
        if not self.available:
            return False
        replies = await self._run(operation, self._lease_calls(script, keys, *args))
        return replies is not None and _all_answered(replies)

    def _lease_calls(self, script: Script, keys: Sequence[PairKey], *args: int) -> list[ScriptCall]:
        """One call per query, on its leases hash."""
        return [
            (script, [_hash_name(group) + _LEASES_SUFFIX], [self._owner, *args, *digests])
            for group, (digests, _) in _group_by_query(keys).items()
        ]

    async def _run(self, operation: str, calls: list[ScriptCall]) -> list[Any] | None:
        """The scripts' replies in one bounded round trip, or None when Redis failed (logged).

        On a Cluster one node may fail alone: its calls then hold the failure in their places, the
        other nodes' replies stand, and only that node backs off (gateway/redisio/cluster.py).
        """
        bound = asyncio.timeout(self._timeout)
        try:
            # A cluster client may learn its layout on the first call: the bound covers it.
            async with bound:
                replies = await run_scripts_each(self._redis, calls)
        except REDIS_FAILURES as exc:
            deadline = bound.when()
            self._outage.failed(operation, exc, None if deadline is None else deadline - self._timeout)
            return None
        failed = [reply for reply in replies if isinstance(reply, BaseException)]
        if len({failure.node for failure in failed if isinstance(failure, NodeFailure)}) > 1:
            # Several nodes of a Cluster at once: its outage, not one node's (which backs off alone).
            self._outage.failed(operation, failed[0])
            return replies
        self._outage.succeeded()
        if failed:
            self._outage.failed_in_part(operation, failed[0])
        return replies

    async def ping(self) -> bool:
        return await self._redis.ping(self._timeout)

    def stored_bytes(self) -> int | None:
        return None  # Redis' own INFO memory says; this process holds none of it

    async def close(self) -> None:
        if self._releasing is not None:
            self._releasing.cancel()
        await self._redis.aclose()


class _LeaseRenewal:
    """Renews a call's leases every half lease until stopped: a timer, and a task only when it fires.

    Most calls end before the first renewal is due, so what they pay is one timer handle.
    """

    def __init__(self, cache: RedisScoreCache, keys: Sequence[PairKey], deadline: float | None) -> None:
        self._cache, self._keys, self._deadline = cache, keys, deadline
        self._loop = asyncio.get_running_loop()
        self._renewing: asyncio.Task[None] | None = None
        self._timer = self._loop.call_later(cache._lease / 2, self._renew)

    def _renew(self) -> None:
        if self._deadline is not None and self._deadline <= self._loop.time():
            return  # a lease past its owner's deadline would only keep waiters waiting for nothing
        self._renewing = asyncio.ensure_future(self._cache.renew(self._keys, self._cache._lease_ms(self._deadline)))
        self._timer = self._loop.call_later(self._cache._lease / 2, self._renew)

    def stop(self) -> None:
        self._timer.cancel()
        if self._renewing is not None:
            self._renewing.cancel()


def redis_key(model: str, instruction: str | None, query: str) -> str:
    """The hash holding one query's cached scores (its first QUERY_HASH_FIELDS passages)."""
    return _hash_name(query_group(model, instruction, query))


def score_keys(model: str, instruction: str | None, query: str) -> list[str]:
    """Every key that may hold one query's scores: its hash, then its spill buckets."""
    name = redis_key(model, instruction, query)
    return [name, *(name + suffix for suffix in _BUCKET_SUFFIXES)]


def _hash_name(group: str) -> str:
    # The braces make the whole group a Cluster hash tag.
    return f"{KEY_PREFIX}{{{group}}}"


def _query_keys(group: str) -> list[str]:
    """KEYS of the scripts: the query's hash, its leases, its spill buckets; one hash tag, one slot."""
    name = _hash_name(group)
    return [name, name + _LEASES_SUFFIX, *(name + suffix for suffix in _BUCKET_SUFFIXES)]


def _group_by_query(keys: Sequence[PairKey]) -> dict[str, tuple[list[bytes], list[int]]]:
    """Query group -> (passage digests, request positions), for each distinct query."""
    groups: dict[str, tuple[list[bytes], list[int]]] = {}
    for position, (group, digest) in enumerate(keys):
        entry = groups.get(group)
        if entry is None:
            entry = groups[group] = ([], [])
        entry[0].append(digest)
        entry[1].append(position)
    return groups


def _all_answered(replies: list[Any]) -> bool:
    """No call of a round trip failed (on a Cluster, one node's calls may fail alone)."""
    return not any(isinstance(reply, BaseException) for reply in replies)


def _decode_score(value: bytes | None) -> float | None:
    """A stored score, or None for a miss; anything malformed or out of range is a miss too."""
    if value is None or len(value) != _SCORE.size:
        return None
    (score,) = _SCORE.unpack(value)
    return score if 0.0 <= score <= 1.0 else None  # NaN fails both comparisons
