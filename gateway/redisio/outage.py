"""When to leave a failing Redis (or one node of a Cluster) alone, and when to say so.

A failure is served by the caller's fallback (uncached, or budgets per process) and logged at
most once per interval. A few failures in a row back off for a moment, so a dead or hung Redis
costs requests nothing; one alone does not, because on a busy event loop a single call can
overrun its bound while Redis is fine. A call that overran its bound while this process itself
stalled (a CPU-bound stretch, a GC pause, the OS running something else) for most of it is
charged to nobody: Redis may well have answered in time.

    LoopLag      how late the event loop runs a callback: tells a stalled process from a slow Redis
    Backoff      failures in a row -> leave it alone for a moment; one per Cluster node
                 (gateway/redisio/cluster.py), and the state inside RedisOutage
    RedisOutage  the cache's or the ledger's: its back-off, and its warnings
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable

# How often LoopLag's callback runs: a stall shows within this much of its length.
LAG_TICK_SECONDS = 0.02


class LoopLag:
    """How late the running event loop has run a callback of its own, lately.

    A tick every LAG_TICK_SECONDS; one that runs late was held up by this process (every callback
    waits for the one before it to yield), never by Redis. Started by its user's start-up, else by
    the first call that succeeds, so it runs only in a process that uses Redis.
    """

    def __init__(self, tick_seconds: float = LAG_TICK_SECONDS) -> None:
        self._tick = tick_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._late: collections.deque[tuple[float, float]] = collections.deque(maxlen=16)  # (ran at, late by)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new loop (tests run one per test)
            self._loop = loop
            self._schedule(loop.time())

    def stalled_through(self, since: float) -> bool:
        """Whether the loop stood still for at least half the time since `since` (loop time)."""
        if self._loop is None:
            return False
        half = (self._loop.time() - since) / 2
        return any(ran_at >= since and late >= half for ran_at, late in self._late)

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self._tick
        self._loop.call_at(self._due, self._ran)

    def _ran(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if now - self._due > self._tick:
            self._late.append((now, now - self._due))
        self._schedule(now)


class ProcessStalled(TimeoutError):
    """A call's bound ran out while this process stood still for most of it: no fault of Redis'."""


class Backoff:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        retry_after_seconds: float = 1.0,
        failures_before_backoff: int = 3,
        lag: LoopLag | None = None,
    ) -> None:
        self._clock = clock
        self._retry_after = retry_after_seconds
        self._failures_before_backoff = failures_before_backoff
        self._failures_in_a_row = 0
        self._skip_until = 0.0
        self.lag = lag or LoopLag()

    @property
    def available(self) -> bool:
        return self._clock() >= self._skip_until

    def succeeded(self) -> None:
        self._failures_in_a_row = 0
        self.lag.start()

    def charged(self, exc: BaseException, since: float | None = None) -> bool:
        """Whether a call begun at `since` (loop time) that failed with `exc` counts against Redis:
        not a timeout during which this process itself stood still for most of the call."""
        if isinstance(exc, ProcessStalled):
            return False
        return not (isinstance(exc, TimeoutError) and since is not None and self.lag.stalled_through(since))

    def count_failure(self) -> bool:
        """Count one failure; whether it starts a back-off."""
        self._failures_in_a_row += 1
        backing_off = self._failures_in_a_row >= self._failures_before_backoff
        if backing_off:
            self._skip_until = self._clock() + self._retry_after
        return backing_off


class RedisOutage(Backoff):
    def __init__(
        self,
        log: logging.Logger,
        what: str,
        fallback: str,
        clock: Callable[[], float] = time.monotonic,
        retry_after_seconds: float = 1.0,
        warn_interval_seconds: float = 30.0,
        failures_before_backoff: int = 3,
    ) -> None:
        super().__init__(clock, retry_after_seconds, failures_before_backoff)
        self._log = log
        self._what = what  # "redis cache"
        self._fallback = fallback  # "serving uncached"
        self._warn_interval = warn_interval_seconds
        self._last_warning = -math.inf

    def failed(self, operation: str, exc: BaseException, since: float | None = None) -> None:
        """A call begun at `since` (loop time, when known) failed: counted, unless this process stalled through it."""
        charged = self.charged(exc, since)
        backing_off = charged and self.count_failure()
        if self._warning_due():
            self._log.warning(
                "%s %s failed (%s: %s)%s; %s%s",
                self._what, operation, type(exc).__name__, str(exc) or "timed out",
                "" if charged else " while this process stalled, not counted against Redis", self._fallback,
                f", leaving Redis alone for {self._retry_after:.1f}s" if backing_off else "",
            )

    def failed_in_part(self, operation: str, exc: BaseException) -> None:
        """One Cluster node failed its share of a call (`exc` names it); the other nodes answered theirs.

        Not counted here: that node backs off on its own (gateway/redisio/cluster.py), and the
        rest of the cluster stays in use.
        """
        if self._warning_due():
            self._log.warning(
                "%s %s failed in part (%s: %s); %s for that node's keys",
                self._what, operation, type(exc).__name__, exc, self._fallback,
            )

    def _warning_due(self) -> bool:
        now = self._clock()
        if now - self._last_warning < self._warn_interval:
            return False
        self._last_warning = now
        return True
