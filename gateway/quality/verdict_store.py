"""Probes once per fleet: canary verdicts shared through Redis, one prober per interval.

    claim      SET NX PX on a lease per (model, provider, fingerprint): the worker that gets it
               probes; every other worker and replica reads the verdict it publishes
    publish    the probe's record (canary scores, or why it could not run, and when), in one hash
               per model, field `provider|fingerprint`, so two configs of a rolling change never
               overwrite each other's verdicts
    records    every record of a model, read by each worker about once a second
    samples    agreement samples (canary and shadow) per provider and reference fingerprint, the
               last 256, pushed by whichever worker measured them; every worker keeps exactly
               these, so all decide alike which providers share the reference's cached scores

A record carries scores, not a verdict: each worker judges them with its own canary (the same
for one config), so every worker reaches the same verdict, agreement and standing.

Without Redis (LocalVerdicts) every worker probes on its own and nothing is shared. When Redis
fails, claims are granted and publishing is skipped: a probe too many costs a few tokens, a
probe too few would leave a failing provider unseen.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from gateway.redisio.client import CONNECT_TIMEOUT_SECONDS, REDIS_FAILURES
from gateway.redisio.commands import Commands, commands_for
from gateway.redisio.outage import RedisOutage

log = logging.getLogger("gateway.quality")

KEY_PREFIX = "rq:{quality}:"  # one hash slot, so a Cluster serves every key from one node
LEASE_SECONDS = 60.0  # a prober that dies mid-probe holds the others off this long at most
# Agreement samples kept per provider and reference: AgreementTracker keeps 256 per language, and
# this list holds every language's, so a busy language's shadow samples do not push out the
# canary's lines of the others (the built-in canary's 18 lines a round, a handful of languages).
MAX_SAMPLES = 1024
RECORD_TTL_SECONDS = 7 * 86_400  # a model's records outlive any probe interval; dropped models age out


class VerdictStore(Protocol):
    shared: bool  # whether another worker's probes are seen here

    async def claim(self, model: str, provider: str, fingerprint: str, seconds: float) -> bool: ...
    async def publish(self, model: str, provider: str, fingerprint: str, record: bytes) -> None: ...
    async def records(self, model: str) -> dict[tuple[str, str], bytes]: ...
    async def push_samples(self, model: str, tracked: str, against: str, samples: list[bytes]) -> None: ...
    async def samples(self, model: str, series: list[tuple[str, str]]) -> list[list[bytes]] | None: ...
    async def close(self) -> None: ...


class LocalVerdicts:
    """One process alone: it probes everything itself."""

    shared = False

    async def claim(self, model: str, provider: str, fingerprint: str, seconds: float) -> bool:
        return True

    async def publish(self, model: str, provider: str, fingerprint: str, record: bytes) -> None:
        return None

    async def records(self, model: str) -> dict[tuple[str, str], bytes]:
        return {}

    async def push_samples(self, model: str, tracked: str, against: str, samples: list[bytes]) -> None:
        return None

    async def samples(self, model: str, series: list[tuple[str, str]]) -> list[list[bytes]] | None:
        return None

    async def close(self) -> None:
        return None


class RedisVerdicts:
    shared = True

    def __init__(self, commands: Commands, timeout_seconds: float) -> None:
        self._redis = commands
        # Off the request path, once a second: room for a connect, which the cache's bound has not.
        self._timeout = max(timeout_seconds, CONNECT_TIMEOUT_SECONDS)
        self._outage = RedisOutage(log, "redis quality verdicts", "probing in this process alone")

    @classmethod
    def from_url(cls, url: str, timeout_seconds: float) -> RedisVerdicts:
        return cls(commands_for(url, timeout_seconds, max_connections=2), timeout_seconds)

    async def claim(self, model: str, provider: str, fingerprint: str, seconds: float) -> bool:
        key = f"{KEY_PREFIX}lease:{model}|{provider}|{fingerprint}"
        answer = await self._run("claim", [("SET", key, "1", "NX", "PX", max(1, int(seconds * 1000)))])
        return answer is None or answer[0] is not None

    async def publish(self, model: str, provider: str, fingerprint: str, record: bytes) -> None:
        key = f"{KEY_PREFIX}verdicts:{model}"
        await self._run("publish", [
            ("HSET", key, f"{provider}|{fingerprint}", record), ("EXPIRE", key, int(RECORD_TTL_SECONDS)),
        ])

    async def records(self, model: str) -> dict[tuple[str, str], bytes]:
        answer = await self._run("read", [("HGETALL", f"{KEY_PREFIX}verdicts:{model}")])
        if not answer:
            return {}
        flat: Any = answer[0]  # a flat list of field, value from one server; a dict from redis-py's client
        items = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2])
        found = {}
        for field, value in items:
            provider, _, fingerprint = _text(field).partition("|")
            found[(provider, fingerprint)] = value if isinstance(value, bytes) else str(value).encode()
        return found

    async def push_samples(self, model: str, tracked: str, against: str, samples: list[bytes]) -> None:
        """Agreement samples of provider fingerprint `tracked` with reference fingerprint `against`."""
        if not samples:
            return
        key = _samples_key(model, tracked, against)
        await self._run("push samples", [
            ("RPUSH", key, *samples), ("LTRIM", key, -MAX_SAMPLES, -1), ("EXPIRE", key, int(RECORD_TTL_SECONDS)),
        ])

    async def samples(self, model: str, series: list[tuple[str, str]]) -> list[list[bytes]] | None:
        """Each (tracked, against) series' samples, oldest first; None when Redis could not say."""
        if not series:
            return []
        answer = await self._run("read samples", [("LRANGE", _samples_key(model, *one), 0, -1) for one in series])
        if answer is None:
            return None
        rows: list[Any] = answer
        return [[v if isinstance(v, bytes) else str(v).encode() for v in values] for values in rows]

    async def close(self) -> None:
        await self._redis.aclose()

    async def _run(self, operation: str, commands: list[tuple[str | bytes | int, ...]]) -> list[object] | None:
        """The answers, or None when Redis failed (logged at most every 30 s) or is left alone."""
        if not self._outage.available:
            return None
        try:
            async with asyncio.timeout(self._timeout):  # the connections have no timeout of their own
                answer = await self._redis.execute(commands)
        except REDIS_FAILURES as exc:
            self._outage.failed(operation, exc)
            return None
        self._outage.succeeded()
        return answer


def _samples_key(model: str, tracked: str, against: str) -> str:
    return f"{KEY_PREFIX}agreement:{model}|{tracked}|{against}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
