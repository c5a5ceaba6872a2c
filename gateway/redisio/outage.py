"""When to leave a failing Redis alone, and when to say so: shared by the cache and the ledger.

A failure is served by the caller's fallback (uncached, or budgets per process) and logged at
most once per interval. A few failures in a row back off for a moment, so a dead or hung Redis
costs requests nothing; one alone does not, because on a busy event loop a single call can
overrun its bound while Redis is fine.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable


class RedisOutage:
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
        self._log = log
        self._what = what  # "redis cache"
        self._fallback = fallback  # "serving uncached"
        self._clock = clock
        self._retry_after = retry_after_seconds
        self._warn_interval = warn_interval_seconds
        self._failures_before_backoff = failures_before_backoff
        self._failures_in_a_row = 0
        self._skip_until = 0.0
        self._last_warning = -math.inf

    @property
    def available(self) -> bool:
        return self._clock() >= self._skip_until

    def succeeded(self) -> None:
        self._failures_in_a_row = 0

    def failed(self, operation: str, exc: BaseException) -> None:
        now = self._clock()
        self._failures_in_a_row += 1
        backing_off = self._failures_in_a_row >= self._failures_before_backoff
        if backing_off:
            self._skip_until = now + self._retry_after
        if now - self._last_warning >= self._warn_interval:
            self._last_warning = now
            self._log.warning(
                "%s %s failed (%s: %s); %s%s",
                self._what, operation, type(exc).__name__, exc or "timed out", self._fallback,
                f", leaving Redis alone for {self._retry_after:.1f}s" if backing_off else "",
            )
