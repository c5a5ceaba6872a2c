"""The score cache contract and the key layout every implementation shares.

    cache group   whose scores a key holds: a model and the scoring identity (and verdict) of
                  the providers that share it (gateway.quality.groups), e.g. `MODEL@3f2a...`
    query group   the scores of one query (and instruction) within a cache group: the first
                  half of a PairKey, and one Redis hash or in-process bucket
    PairKey       (query group, passage digest): one (query, passage) pair's score
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.records import record

# A digest of 128 bits from a cryptographic hash: passages come from outside, and a crafted
# collision with a fast non-cryptographic hash could plant one passage's score on another.
DIGEST_BYTES = 16


# (query group, passage digest): computed once per request, used by the cache and single flight.
PairKey = tuple[str, bytes]


@record
class Lookup:
    """What one read found: a score or None per key, and which missing keys to wait for."""

    scores: list[float | None]
    # Positions of missing keys another process has leased: it is scoring them now. Every other
    # missing key is leased to this process (or there are no leases): score it, then put or release it.
    elsewhere: frozenset[int] = frozenset()


class LeaseKeeper(Protocol):
    """Keeps leases alive while their owner scores the pairs; stop() once they are stored or released."""

    def stop(self) -> None: ...


class ScoreCache(Protocol):
    """Batch-shaped on purpose: one round trip reads all of a request's pairs.

    Leases make single flight reach across processes: `lookup` claims the missing pairs for this
    process in the same round trip as the read, unless another process holds them; `put_many`
    ends the leases of what it stores, `release` those of pairs this process did not store (a write
    skipped or failed), so another process waiting for them scores them at once.
    A cache of one process has no one to share with: it grants every claim.
    """

    async def start(self) -> None: ...

    async def get_many(self, keys: Sequence[PairKey]) -> list[float | None]:
        """Read only: no claims."""
        ...

    async def lookup(self, keys: Sequence[PairKey], deadline: float | None = None) -> Lookup:
        """Read, and lease the missing keys to this process until `deadline` (event-loop time) at the latest."""
        ...

    async def put_many(self, keys: Sequence[PairKey], scores: Sequence[float]) -> bool:
        """Store the scores; whether every one was stored (and its lease ended with it)."""
        ...

    async def release(self, keys: Sequence[PairKey]) -> None:
        """End this process's leases on these keys (it will not store their scores)."""
        ...

    def keep_leases(self, keys: Sequence[PairKey], deadline: float | None) -> LeaseKeeper:
        """Renew this process's leases on these keys while it scores them, never past `deadline`."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers (for /readyz)."""
        ...

    def stored_bytes(self) -> int | None:
        """What this process's memory holds of the cache (what cache.max_bytes bounds); None for Redis."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """What a request lets the cache do, from its Cache-Control header."""

    read: bool = True
    write: bool = True

    @classmethod
    def from_header(cls, cache_control: str | None) -> CachePolicy:
        if not cache_control:
            return _DEFAULT_POLICY
        directives = {part.strip().lower().split("=", 1)[0] for part in cache_control.split(",")}
        if "no-store" in directives:
            return cls(read=False, write=False)
        if "no-cache" in directives:
            return cls(read=False, write=True)
        return _DEFAULT_POLICY


_DEFAULT_POLICY = CachePolicy()


# Never updated itself, only copied: a copy skips building and parameterizing a new BLAKE2b state,
# a quarter of a passage digest's cost (9.3 vs 12.2 us for 20 passages of ~400 characters).
_EMPTY_DIGEST = hashlib.blake2b(digest_size=DIGEST_BYTES)


def query_group(group: str, instruction: str | None, query: str) -> str:
    """Names the query group: the scores of one query (and instruction) within a cache group, the
    cache group in clear, instruction and query digested."""
    digest = _EMPTY_DIGEST.copy()
    # None and "" are different instructions; the marker byte keeps them apart.
    digest.update(b"\x00" if instruction is None else b"\x01" + instruction.encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update(query.encode("utf-8", "surrogatepass"))
    return f"{group}:{digest.hexdigest()}"


def passage_digest(document: str) -> bytes:
    return passage_digests([document])[0]


class OneQueryKeys(list[PairKey]):
    """pair_keys of one query's passages, which also keep the group and the digests they were made
    of: a cache reads and writes a query's pairs together (cache/memory.py), and need not take
    the keys apart again to find them. Nothing changes a list of keys once made."""

    __slots__ = ("digests", "group")

    def __init__(self, group: str, digests: list[bytes]) -> None:
        super().__init__(zip(itertools.repeat(group), digests))
        self.group = group
        self.digests = digests


def pair_keys(
    group: str, instruction: str | None, queries: Sequence[str], documents: Sequence[str],
    digests: list[bytes] | None = None,
) -> list[PairKey]:
    """The pairs' keys in one cache group; `digests`: the documents' passage_digests, when the caller has them."""
    digests = passage_digests(documents) if digests is None else digests
    if len(set(queries)) == 1:  # one query for every passage: the knowledge-base call
        return OneQueryKeys(query_group(group, instruction, queries[0]), digests)
    query_groups: dict[str, str] = {}
    keys = []
    for query, digest in zip(queries, digests):
        found = query_groups.get(query)
        if found is None:
            found = query_groups[query] = query_group(group, instruction, query)
        keys.append((found, digest))
    return keys


def list_digests(documents: Sequence[str]) -> list[bytes]:
    """Per position, a digest of the whole ordered list and the position: a list-wise model's score
    of a document depends on every other and on the order, so each is cached as a pair of that list.
    Apart from passage digests (another input to the hash), so never read as a per-pair score."""
    whole = _EMPTY_DIGEST.copy()
    whole.update(b"list\x00")
    for passage in passage_digests(documents):
        whole.update(passage)
    digests = []
    for position in range(len(documents)):
        at_position = whole.copy()
        at_position.update(position.to_bytes(4, "big"))
        digests.append(at_position.digest())
    return digests


def passage_digests(documents: Sequence[str]) -> list[bytes]:
    """passage_digest of each, in one loop (a call per passage was a tenth of their cost)."""
    fresh = _EMPTY_DIGEST.copy
    digests = []
    for document in documents:
        digest = fresh()
        digest.update(document.encode("utf-8", "surrogatepass"))
        digests.append(digest.digest())
    return digests
