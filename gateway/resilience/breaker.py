"""A circuit breaker for one provider: stop sending it requests while it keeps failing.

    closed     every call is allowed; failures are counted
       │  `consecutive_failures` in a row, or an error rate of at least `error_rate` over
       ▼  `window_seconds` once the window holds `min_calls` outcomes
    open       every call is refused until `cooldown_seconds` have passed
       │
       ▼
    half_open  one probe at a time is allowed, the rest refused; the probe's success closes
               the breaker, its failure opens it again for another cool-down

When every provider's breaker is open, the router lets calls through to the one that opened
first anyway (the panic rule: a blackout is worse than a call to a provider that may have
recovered): `admit_panic()` treats such a call as the probe, so its success closes the breaker
at once and its failure opens it again, now the latest to have opened.

A probe whose task is cancelled never reports: the caller releases its slot with
`record_cancelled()`, and a slot nobody releases frees itself after `probe_timeout_seconds`,
so a lost probe cannot keep the breaker half open for good.

Outcomes carry no ticket, so the breaker tells a probe from a straggler by state alone: while
open, outcomes of calls let through before it opened are ignored (their failure reason is
kept); while half open, the first outcome reported settles the probe.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from gateway.observability.metrics import BreakerState
from gateway.resilience.window import Clock, SlidingCounts


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    consecutive_failures: int = 5
    error_rate: float = 0.5  # opens at this share of failures or more
    window_seconds: float = 30.0
    min_calls: int = 10  # outcomes the window needs before its error rate counts
    cooldown_seconds: float = 15.0
    probe_timeout_seconds: float = 60.0  # keep above the provider's own request timeout

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError(f"consecutive_failures must be at least 1, got {self.consecutive_failures}")
        if not 0.0 < self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be in (0, 1], got {self.error_rate}")
        if self.min_calls < 1:
            raise ValueError(f"min_calls must be at least 1, got {self.min_calls}")
        for name in ("window_seconds", "cooldown_seconds", "probe_timeout_seconds"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """A snapshot for /readyz and a status page. Times are in the breaker's clock (monotonic)."""

    state: BreakerState
    opened_at: float | None  # when it last opened; None while closed
    seconds_until_probe: float | None  # while open: how long the cool-down still runs
    consecutive_failures: int
    last_failure: str | None
    last_failure_at: float | None


class CircuitBreaker:
    def __init__(self, config: BreakerConfig | None = None, clock: Clock = time.monotonic) -> None:
        self._config = config or BreakerConfig()
        self._clock = clock
        self._window = SlidingCounts(("calls", "failures"), self._config.window_seconds, clock)
        self._state: BreakerState = "closed"
        self._consecutive_failures = 0
        self._opened_at: float | None = None
        self._probe_started_at: float | None = None  # set while a half-open probe is out
        self._last_failure: str | None = None
        self._last_failure_at: float | None = None

    @property
    def config(self) -> BreakerConfig:
        return self._config

    @property
    def state(self) -> BreakerState:
        self._end_cooldown_if_due()
        return self._state

    def allow(self) -> bool:
        """Whether a call may go out now. In half open, True claims the one probe slot."""
        self._end_cooldown_if_due()
        if self._state == "closed":
            return True
        if self._state == "open":
            return False
        now = self._clock()
        probe_lost = (
            self._probe_started_at is not None
            and now - self._probe_started_at >= self._config.probe_timeout_seconds
        )
        if self._probe_started_at is None or probe_lost:
            self._probe_started_at = now
            return True
        return False

    def admit_panic(self) -> None:
        """Let a call through although the breaker refuses calls; its outcome settles it like a probe."""
        self._end_cooldown_if_due()
        if self._state != "closed":
            self._state = "half_open"
            self._probe_started_at = self._clock()

    def reconfigure(self, config: BreakerConfig) -> None:
        """New thresholds for the next outcomes; what the breaker saw and its state stay."""
        if config.window_seconds != self._config.window_seconds:
            # Bucket sizes follow the window: a new window starts counting afresh.
            self._window = SlidingCounts(("calls", "failures"), config.window_seconds, self._clock)
        self._config = config

    def record_success(self) -> None:
        self._end_cooldown_if_due()
        if self._state == "half_open":
            self._close()
        elif self._state == "closed":
            self._consecutive_failures = 0
            self._window.add("calls")

    def record_failure(self, reason: str) -> None:
        """A failure that is the provider's fault; the client's own bad request is not one."""
        self._end_cooldown_if_due()
        now = self._clock()
        self._last_failure = reason
        self._last_failure_at = now
        if self._state == "half_open":
            self._open(now)
        elif self._state == "closed":
            self._consecutive_failures += 1
            self._window.add("calls")
            self._window.add("failures")
            if self._should_open():
                self._open(now)

    def record_cancelled(self) -> None:
        """The call ended without an outcome (cancelled, or abandoned for a hedge): free its slot."""
        self._end_cooldown_if_due()
        if self._state == "half_open":
            self._probe_started_at = None

    def status(self) -> BreakerStatus:
        state = self.state
        until_probe = None
        if state == "open" and self._opened_at is not None:
            until_probe = max(0.0, self._opened_at + self._config.cooldown_seconds - self._clock())
        return BreakerStatus(
            state=state,
            opened_at=self._opened_at,
            seconds_until_probe=until_probe,
            consecutive_failures=self._consecutive_failures,
            last_failure=self._last_failure,
            last_failure_at=self._last_failure_at,
        )

    def _should_open(self) -> bool:
        if self._consecutive_failures >= self._config.consecutive_failures:
            return True
        calls = self._window.total("calls")
        if calls < self._config.min_calls:
            return False
        return self._window.total("failures") >= self._config.error_rate * calls

    def _open(self, now: float) -> None:
        self._state = "open"
        self._opened_at = now
        self._probe_started_at = None

    def _close(self) -> None:
        # A fresh start: the failures that opened the breaker must not reopen it at the
        # first failure after the provider recovered.
        self._state = "closed"
        self._opened_at = None
        self._probe_started_at = None
        self._consecutive_failures = 0
        self._window.clear()

    def _end_cooldown_if_due(self) -> None:
        if self._state != "open" or self._opened_at is None:
            return
        if self._clock() - self._opened_at >= self._config.cooldown_seconds:
            self._state = "half_open"
            self._probe_started_at = None
