"""Requests and documents per minute, per client and team: a sliding window over two minutes.

A minute's count plus the previous minute's, weighed by how much of it the sliding minute still
covers (the estimate Cloudflare's limiter uses): no burst of twice the limit at a minute's turn,
as a fixed window allows, and two counters per rate instead of a sorted set holding one member
per request or document (a documents_per_minute of 20,000 would hold 20,000). That is also why not
pyrate-limiter's Redis bucket; and this runs on the gateway's own Redis connections, bounds and
outage handling, like the ledger.

With Redis, one script checks every rate of a request and counts it in all or none, so the fleet
shares one count. Without Redis, or while it is away, each process counts alone (MemoryRates):
a fleet of N processes then lets through up to N times a limit, and no client is locked out.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from gateway.redisio.client import REDIS_FAILURES
from gateway.redisio.commands import Commands, Script, commands_for, run_scripts
from gateway.redisio.outage import RedisOutage

log = logging.getLogger("gateway.clients")

WINDOW_SECONDS = 60
KEY_PREFIX = "rb:{rate}:"  # one hash slot: a Cluster runs the script over every rate's keys
# A minute's counter outlives the next minute, which still weighs it.
_COUNTER_TTL_SECONDS = 3 * WINDOW_SECONDS
_WARM_CONNECTIONS = 4

Counts = Literal["requests", "documents"]


class Rate(NamedTuple):
    key: str  # "client:kb-prod:requests"
    per_minute: int
    counts: Counts
    owner: str  # "client kb-prod": what a refusal names


@dataclass(frozen=True, slots=True)
class RateRefusal:
    rate: Rate
    used: int  # the sliding minute's count before this request
    retry_after_seconds: int

    @property
    def message(self) -> str:
        return (f"{self.rate.owner} is over its {self.rate.counts}_per_minute = {self.rate.per_minute} "
                f"({self.used} in the last minute)")


class RateLimiter(Protocol):
    async def start(self) -> None: ...

    async def admit(self, rates: Sequence[Rate], documents: int) -> RateRefusal | None:
        """Count one request of `documents` against every rate, or none of them and say which is full."""
        ...

    async def used(self, rates: Sequence[Rate]) -> list[int]:
        """Each rate's sliding-minute count now (for /status)."""
        ...

    async def close(self) -> None: ...


def window_at(now: float) -> tuple[int, float]:
    """The minute `now` falls in, and the share of it gone by."""
    minute, into = divmod(now, WINDOW_SECONDS)
    return int(minute), into / WINDOW_SECONDS


def sliding_count(current: int, previous: int, gone: float) -> int:
    return current + math.floor(previous * (1.0 - gone))


def seconds_until_fits(current: int, previous: int, gone: float, limit: int, amount: int) -> int:
    """How long until `amount` more fits, if nothing else is counted meanwhile (at least 1 s)."""
    room = limit - amount
    if room < 0:
        return WINDOW_SECONDS  # never fits: the request alone is over the limit
    if current <= room:  # the previous minute's share must fade enough
        needed = 1.0 - room / previous if previous else gone
        wait = (needed - gone) * WINDOW_SECONDS
    else:  # wait into the next minute, where this one's count fades in turn
        wait = (1.0 - gone + (1.0 - room / current)) * WINDOW_SECONDS
    return max(1, math.ceil(wait))


def amount_of(rate: Rate, documents: int) -> int:
    return 1 if rate.counts == "requests" else documents


class MemoryRates:
    """This process's counts: the limiter without Redis, and RedisRates' while Redis is away."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counts: dict[str, list[int]] = {}  # key -> [minute, its count, the minute before's]

    async def start(self) -> None:
        return None

    async def admit(self, rates: Sequence[Rate], documents: int) -> RateRefusal | None:
        return self.admit_now(rates, documents)

    def admit_now(self, rates: Sequence[Rate], documents: int) -> RateRefusal | None:
        # Every admitted request of every rated client runs this: one pass, arithmetic inline.
        minute, gone = window_at(self._clock())
        kept = 1.0 - gone
        counts = self._counts
        counted: list[tuple[list[int], int]] = []
        for rate in rates:
            counter = counts.get(rate.key)
            if counter is None or counter[0] != minute:
                counter = self._counter(rate.key, minute)
            amount = 1 if rate.counts == "requests" else documents
            if counter[1] + math.floor(counter[2] * kept) + amount > rate.per_minute:
                return RateRefusal(rate, sliding_count(counter[1], counter[2], gone),
                                   seconds_until_fits(counter[1], counter[2], gone, rate.per_minute, amount))
            counted.append((counter, amount))
        for counter, amount in counted:
            counter[1] += amount
        return None

    def note(self, rates: Sequence[Rate], documents: int) -> None:
        """Count a request the shared counts admitted, so this process's own stay close if Redis goes."""
        minute, _ = window_at(self._clock())
        for rate in rates:
            self._counter(rate.key, minute)[1] += amount_of(rate, documents)

    async def used(self, rates: Sequence[Rate]) -> list[int]:
        minute, gone = window_at(self._clock())
        return [sliding_count(counter[1], counter[2], gone)
                for counter in (self._counter(rate.key, minute) for rate in rates)]

    async def close(self) -> None:
        return None

    def _counter(self, key: str, minute: int) -> list[int]:
        """The rate's counter, moved on to `minute` (a minute gone by becomes the previous one)."""
        counter = self._counts.get(key)
        if counter is None:
            counter = self._counts[key] = [minute, 0, 0]
        elif counter[0] != minute:
            counter[:] = [minute, 0, counter[1] if counter[0] == minute - 1 else 0]
        return counter


# KEYS: per rate, this minute's counter then the previous minute's. ARGV[1]: the previous minute's
# weight in thousandths; then per rate its limit and this request's amount. Returns {0} when
# counted, else {index of the full rate, its minute's count, the previous minute's}.
_ADMIT = Script("""
local weight = tonumber(ARGV[1])
local rates = #KEYS / 2
local counts = {}
for i = 1, rates do
  local current = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local previous = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  if current + math.floor(previous * weight / 1000) + tonumber(ARGV[2 * i + 1]) > tonumber(ARGV[2 * i]) then
    return {i, current, previous}
  end
end
for i = 1, rates do
  redis.call('INCRBY', KEYS[2 * i - 1], ARGV[2 * i + 1])
  redis.call('EXPIRE', KEYS[2 * i - 1], ARGV[#ARGV])
end
return {0}
""")


def _counter_key(key: str, minute: int) -> str:
    return f"{KEY_PREFIX}{key}:{minute}"


class RedisRates:
    def __init__(self, commands: Commands, timeout_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self._redis = commands
        self._timeout = timeout_seconds
        self._clock = clock
        self._outage = RedisOutage(log, "redis rate limits", "counting client rates per process")
        self.fallback = MemoryRates(clock)

    @classmethod
    def from_url(cls, url: str, timeout_seconds: float) -> RedisRates:
        return cls(commands_for(url, timeout_seconds, max_connections=16), timeout_seconds)

    async def start(self) -> None:
        self._outage.lag.start()
        # Opening a connection costs more than a call's bound: opened now, not by the first requests.
        await self._redis.warm_up(_WARM_CONNECTIONS)

    async def admit(self, rates: Sequence[Rate], documents: int) -> RateRefusal | None:
        if not rates:
            return None
        if self._outage.available:
            minute, gone = window_at(self._clock())
            keys: list[str] = []
            args: list[int] = [round((1.0 - gone) * 1000)]
            for rate in rates:
                keys += [_counter_key(rate.key, minute), _counter_key(rate.key, minute - 1)]
                args += [rate.per_minute, amount_of(rate, documents)]
            try:
                async with asyncio.timeout(self._timeout):
                    [reply] = await run_scripts(self._redis, [(_ADMIT, keys, [*args, _COUNTER_TTL_SECONDS])])
            except REDIS_FAILURES as exc:
                self._outage.failed("admit", exc)
            else:
                self._outage.succeeded()
                if int(reply[0]) == 0:
                    self.fallback.note(rates, documents)
                    return None
                rate = rates[int(reply[0]) - 1]
                current, previous = int(reply[1]), int(reply[2])
                used = sliding_count(current, previous, gone)
                return RateRefusal(rate, used, seconds_until_fits(
                    current, previous, gone, rate.per_minute, amount_of(rate, documents)))
        return self.fallback.admit_now(rates, documents)

    async def used(self, rates: Sequence[Rate]) -> list[int]:
        if not rates or not self._outage.available:
            return await self.fallback.used(rates)
        minute, gone = window_at(self._clock())
        commands = [("GET", _counter_key(rate.key, m)) for rate in rates for m in (minute, minute - 1)]
        try:
            async with asyncio.timeout(self._timeout):
                replies = await self._redis.execute(commands)
        except REDIS_FAILURES as exc:
            self._outage.failed("read", exc)
            return await self.fallback.used(rates)
        counts = [int(reply or 0) for reply in replies]
        return [sliding_count(counts[2 * i], counts[2 * i + 1], gone) for i in range(len(rates))]

    async def close(self) -> None:
        await self._redis.aclose()
