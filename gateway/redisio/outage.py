"""When to leave a failing Redis (or one node of a Cluster) alone, and when to say so.

A failure is served by the caller's fallback (uncached, or budgets per process) and logged at
most once per interval. A few failures in a row back off for a moment, so a dead or hung Redis
costs requests nothing; one alone does not, because on a busy event loop a single call can
overrun its bound while Redis is fine.

    Backoff      failures in a row -> leave it alone for a moment; one per Cluster node
                 (gateway/redisio/cluster.py), and the state inside RedisOutage
    RedisOutage  the cache's or the ledger's: its back-off, and its warnings
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        retry_after_seconds: float = 1.0,
        failures_before_backoff: int = 3,
    ) -> None:
        self._clock = clock
        self._retry_after = retry_after_seconds
        self._failures_before_backoff = failures_before_backoff
        self._failures_in_a_row = 0
        self._skip_until = 0.0

    @property
    def available(self) -> bool:
        return self._clock() >= self._skip_until

    def succeeded(self) -> None:
        self._failures_in_a_row = 0

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

    def failed(self, operation: str, exc: BaseException) -> None:
        backing_off = self.count_failure()
        if self._warning_due():
            self._log.warning(
                "%s %s failed (%s: %s); %s%s",
                self._what, operation, type(exc).__name__, str(exc) or "timed out", self._fallback,
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
