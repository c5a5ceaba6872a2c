"""The in-process score cache: one compact bucket per query, least recently used queries evicted
first, bounded by bytes, with a TTL.

The layout mirrors the Redis one (a hash per query group, README "Redis layout and memory"): a
query's bucket is one bytearray, its expiry time (a double) and then, per passage, the 16-byte
digest and the score (a double) end to end. A pair costs 24 bytes plus its share of the bucket,
instead of the four Python objects (key tuple, digest bytes, value tuple, float) an entry per pair
cost (~250 B). A passage is found by searching the bucket with bytearray.find, at a pair's offset:
a scan in C over a few kilobytes for the tens of passages a query has. The TTL is per query,
renewed on write, as in Redis.
"""

from __future__ import annotations

import functools
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from gateway.cache.base import DIGEST_BYTES, LeaseKeeper, Lookup, OneQueryKeys, PairKey

# What the bound counts, measured with tracemalloc (bench/memory_cache.py; tests/test_memory_cache.py
# holds the bound at 1,000,000 pairs): a pair with the bytearray's spare capacity as it grows, and a
# bucket's own objects (its slot in the LRU, the bytearray, the group name's str beyond its length).
PAIR_BYTES = 27  # 16 + 8, and up to 1/8 spare capacity
BUCKET_BYTES = 230  # besides the length of its group name
_STAMP = struct.Struct("<d")  # expiry (a bucket's first 8 bytes) and each score
_PAIR = DIGEST_BYTES + _STAMP.size


class _NoLeases:
    def stop(self) -> None:
        """Nothing was kept."""


_NO_LEASES = _NoLeases()


def _new_bucket(expires: float) -> bytearray:
    return bytearray(_STAMP.pack(expires))


def _expires(bucket: bytearray) -> float:
    expires: float = _STAMP.unpack_from(bucket)[0]
    return expires


def _pairs_in(bucket: bytearray) -> int:
    return (len(bucket) - _STAMP.size) // _PAIR


def _offset_of(bucket: bytearray, digest: bytes) -> int:
    """Where the passage's pair starts in the bucket, or -1."""
    start = _STAMP.size
    while (at := bucket.find(digest, start)) >= 0:
        if (at - _STAMP.size) % _PAIR == 0:
            return at
        start = at + 1  # a match straddling a digest and a score: not this passage
    return -1


@functools.lru_cache(maxsize=256)
def _pairs_layout(count: int) -> struct.Struct:
    """`count` pairs end to end, as _put appends them one by one: digest, then the score."""
    return struct.Struct("<" + f"{DIGEST_BYTES}sd" * count)


def _interleaved(digests: list[bytes], scores: Sequence[float]) -> list[bytes | float]:
    """digest, score, digest, score...: by two slice assignments in C (chaining zip's pairs built
    a tuple a pair, and took twice as long as the pack itself)."""
    flat: list[bytes | float] = [*digests, *scores]
    flat[::2] = digests
    flat[1::2] = scores
    return flat


def _put(bucket: bytearray, digest: bytes, score: float) -> bool:
    """Store a score; True when the passage is new to the bucket."""
    at = _offset_of(bucket, digest)
    if at >= 0:
        _STAMP.pack_into(bucket, at + DIGEST_BYTES, score)
        return False
    bucket += digest
    bucket += _STAMP.pack(score)
    return True


def _runs(keys: Sequence[PairKey]) -> list[tuple[str, list[bytes]]]:
    """The keys as runs of one query group each, in order: a query's keys come together (pair_keys
    builds them so), and a bucket is then found, renewed or built once a run, not once a key."""
    if isinstance(keys, OneQueryKeys):  # one query's keys as pair_keys made them: the knowledge-base call
        return [(keys.group, keys.digests)]
    groups = {group for group, _ in keys}
    if len(groups) == 1:  # one query: the knowledge-base call
        return [(groups.pop(), [digest for _, digest in keys])]
    runs: list[tuple[str, list[bytes]]] = []
    for group, digest in keys:
        if not runs or runs[-1][0] != group:
            runs.append((group, []))
        runs[-1][1].append(digest)
    return runs


class MemoryScoreCache:
    def __init__(
        self, max_bytes: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic,
        max_entries: int | None = None,
    ) -> None:
        self._buckets: OrderedDict[str, bytearray] = OrderedDict()
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._pairs = 0
        self._bytes = 0

    def __len__(self) -> int:
        return self._pairs

    def stored_bytes(self) -> int | None:
        """What the bound counts: about what the cache holds in this process's memory."""
        return self._bytes

    async def start(self) -> None:
        """Nothing to open: the in-process cache is ready when built."""

    async def get_many(self, keys: Sequence[PairKey]) -> list[float | None]:
        return self._read(keys)

    def _read(self, keys: Sequence[PairKey]) -> list[float | None]:
        now = self._clock()
        found: list[float | None] = []
        for group, digests in _runs(keys):
            bucket = self._live(group, now)
            if bucket is None:  # a query never seen (or expired): the miss path, in one step
                found += [None] * len(digests)
                continue
            for digest in digests:
                at = _offset_of(bucket, digest)
                found.append(None if at < 0 else _STAMP.unpack_from(bucket, at + DIGEST_BYTES)[0])
        return found

    def _live(self, group: str, now: float) -> bytearray | None:
        bucket = self._buckets.get(group)
        if bucket is None:
            return None
        if _expires(bucket) <= now:
            self._drop(group)
            return None
        self._buckets.move_to_end(group)
        return bucket

    async def lookup(self, keys: Sequence[PairKey], deadline: float | None = None) -> Lookup:
        # Nobody else reads this cache: every claim is granted, and flights.py shares the calls.
        return Lookup(self._read(keys))

    async def release(self, keys: Sequence[PairKey]) -> None:
        """No leases to end."""

    def keep_leases(self, keys: Sequence[PairKey], deadline: float | None) -> LeaseKeeper:
        return _NO_LEASES  # no leases to keep

    async def put_many(self, keys: Sequence[PairKey], scores: Sequence[float]) -> bool:
        now = self._clock()
        expires = now + self._ttl
        added = 0
        start = 0
        for group, digests in _runs(keys):
            run_scores = scores[start : start + len(digests)]
            start += len(digests)
            bucket = self._live_to_write(group, now, expires)
            if bucket is None:
                bucket = self._buckets[group] = _new_bucket(expires)
                self._bytes += BUCKET_BYTES + len(group)
                if len(set(digests)) == len(digests):
                    # A new query's passages, each once (the miss path): its bucket filled in one pack.
                    bucket += _pairs_layout(len(digests)).pack(*_interleaved(digests, run_scores))
                    added += len(digests)
                    continue
            for digest, score in zip(digests, run_scores):
                added += _put(bucket, digest, score)
        self._pairs += added
        self._bytes += PAIR_BYTES * added
        self._evict()
        return True

    def _live_to_write(self, group: str, now: float, expires: float) -> bytearray | None:
        """The group's live bucket with its expiry renewed, or None (an expired one is dropped)."""
        bucket = self._buckets.get(group)
        if bucket is not None and _expires(bucket) > now:
            _STAMP.pack_into(bucket, 0, expires)
            self._buckets.move_to_end(group)
            return bucket
        if bucket is not None:
            self._drop(group)
        return None

    def _evict(self) -> None:
        while self._buckets and (self._bytes > self._max_bytes
                                 or (self._max_entries is not None and self._pairs > self._max_entries)):
            self._drop(next(iter(self._buckets)))

    def _drop(self, group: str) -> None:
        pairs = _pairs_in(self._buckets.pop(group))
        self._pairs -= pairs
        self._bytes -= BUCKET_BYTES + len(group) + PAIR_BYTES * pairs

    async def ping(self) -> bool:
        return True  # in this process: there whenever the gateway is

    async def close(self) -> None:
        self._buckets.clear()
        self._pairs = self._bytes = 0
