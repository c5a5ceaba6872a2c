"""Clients created at run time (POST /admin/clients): their settings and their keys' digests.

    ClientRecord       one client: settings, the SHA-256 of its key, and of its previous key with
                       when that one stops working (a rotation's grace period)
    MemoryClientStore  this process's records: without Redis; lost on restart (said at start)
    RedisClientStore   the fleet's, in one Redis hash, with a version every change increments:
                       each process reads the version every POLL_SECONDS and the records when it
                       moved, so a client created or revoked anywhere is known everywhere within
                       a second. Requests are served from this process's copy, never from Redis:
                       while Redis is away the clients known here keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.config import ClientSettings
from gateway.redisio.client import REDIS_FAILURES
from gateway.redisio.commands import Commands, commands_for
from gateway.redisio.outage import RedisOutage

log = logging.getLogger("gateway.clients")

POLL_SECONDS = 0.25  # a revocation reaches every process within this (plus one round trip)
_RECORDS = "rb:{clients}:records"  # name -> record (JSON); one hash slot with the version
_VERSION = "rb:{clients}:version"


@dataclass(frozen=True, slots=True)
class ClientRecord:
    name: str
    settings: ClientSettings
    digest: bytes
    old_digest: bytes | None = None
    old_valid_until: float = 0.0  # Unix time

    def holds(self, digest: bytes, now: float) -> bool:
        return digest == self.digest or (digest == self.old_digest and now < self.old_valid_until)

    def to_json(self) -> bytes:
        return orjson.dumps({
            "name": self.name, "settings": self.settings.model_dump(mode="json"), "digest": self.digest.hex(),
            "old_digest": None if self.old_digest is None else self.old_digest.hex(),
            "old_valid_until": self.old_valid_until,
        })

    @classmethod
    def from_json(cls, data: bytes | str) -> ClientRecord:
        raw: dict[str, Any] = orjson.loads(data)
        old = raw["old_digest"]
        return cls(raw["name"], ClientSettings.model_validate(raw["settings"]), bytes.fromhex(raw["digest"]),
                   None if old is None else bytes.fromhex(old), float(raw["old_valid_until"]))


def _parsed(value: bytes) -> ClientRecord | None:
    """A stored record, or None (logged) for one this version cannot read: the others still serve."""
    try:
        return ClientRecord.from_json(value)
    except (ValueError, KeyError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        log.error("a created client's record in Redis cannot be read, so its key is refused: %s", exc)
        return None


class StoreUnavailable(Exception):
    """The shared store could not be written: nothing changed."""


class ClientStore(Protocol):
    shared: bool  # across processes (Redis), or this process's alone

    async def start(self) -> None: ...

    def lookup(self, digest: bytes, now: float) -> ClientRecord | None:
        """The client this key digest belongs to, from this process's copy (no I/O)."""
        ...

    def records(self) -> list[ClientRecord]: ...

    @property
    def empty(self) -> bool: ...

    async def put(self, record: ClientRecord, *, create: bool) -> bool:
        """Store the record; with `create`, only if no client has its name (False then)."""
        ...

    async def delete(self, name: str) -> bool: ...

    async def close(self) -> None: ...


class MemoryClientStore:
    shared = False

    def __init__(self) -> None:
        self._by_name: dict[str, ClientRecord] = {}
        self._by_digest: dict[bytes, ClientRecord] = {}

    async def start(self) -> None:
        return None

    def lookup(self, digest: bytes, now: float) -> ClientRecord | None:
        record = self._by_digest.get(digest)
        return record if record is not None and record.holds(digest, now) else None

    def records(self) -> list[ClientRecord]:
        return sorted(self._by_name.values(), key=lambda record: record.name)

    @property
    def empty(self) -> bool:
        return not self._by_name

    async def put(self, record: ClientRecord, *, create: bool) -> bool:
        if create and record.name in self._by_name:
            return False
        self.replace_all([*(r for r in self._by_name.values() if r.name != record.name), record])
        return True

    async def delete(self, name: str) -> bool:
        if name not in self._by_name:
            return False
        self.replace_all([r for r in self._by_name.values() if r.name != name])
        return True

    def replace_all(self, records: list[ClientRecord]) -> None:
        """A new copy, swapped in whole: a lookup never sees half of a change."""
        by_digest = {record.digest: record for record in records}
        by_digest.update({record.old_digest: record for record in records if record.old_digest is not None})
        self._by_name, self._by_digest = {record.name: record for record in records}, by_digest

    async def close(self) -> None:
        return None


class RedisClientStore:
    shared = True

    def __init__(self, commands: Commands, timeout_seconds: float, poll_seconds: float = POLL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = commands
        self._timeout = timeout_seconds
        self._poll = poll_seconds
        self._outage = RedisOutage(log, "redis client store", "serving the clients known to this process", clock)
        self._local = MemoryClientStore()
        self._version: bytes | None = None
        self._poller: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, timeout_seconds: float) -> RedisClientStore:
        return cls(commands_for(url, timeout_seconds, max_connections=4), timeout_seconds)

    async def start(self) -> None:
        await self._redis.warm_up(1)  # a connection opens slower than a call's bound allows
        await self._refresh()
        self._poller = asyncio.ensure_future(self._poll_forever())

    def lookup(self, digest: bytes, now: float) -> ClientRecord | None:
        return self._local.lookup(digest, now)

    def records(self) -> list[ClientRecord]:
        return self._local.records()

    @property
    def empty(self) -> bool:
        return self._local.empty

    async def put(self, record: ClientRecord, *, create: bool) -> bool:
        command = "HSETNX" if create else "HSET"
        [written, _] = await self._write([(command, _RECORDS, record.name, record.to_json()), ("INCR", _VERSION)])
        await self._refresh()
        return not create or int(written) == 1

    async def delete(self, name: str) -> bool:
        [removed, _] = await self._write([("HDEL", _RECORDS, name), ("INCR", _VERSION)])
        await self._refresh()
        return int(removed) == 1

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._redis.aclose()

    async def _write(self, commands: list[tuple[str | bytes, ...]]) -> list[Any]:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._redis.execute(commands)
        except REDIS_FAILURES as exc:
            self._outage.failed("write", exc)
            raise StoreUnavailable(f"the client store's Redis did not answer ({type(exc).__name__})") from None

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            if self._outage.available:
                await self._refresh()

    async def _refresh(self) -> None:
        """Read the records again when the version moved; on failure keep the copy this process has."""
        try:
            async with asyncio.timeout(self._timeout):
                [version] = await self._redis.execute([("GET", _VERSION)])
                if version == self._version:
                    return
                [values] = await self._redis.execute([("HVALS", _RECORDS)])
        except REDIS_FAILURES as exc:
            self._outage.failed("read", exc)
            return
        self._outage.succeeded()
        self._local.replace_all([record for record in map(_parsed, values) if record is not None])
        self._version = version
