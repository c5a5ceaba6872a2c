"""When to retry the same provider, how long to wait first, and how many retries to allow at all.

Retries of a struggling provider are what turn its slowdown into an outage, so they are capped
twice: per call by the router's attempt limit, and across calls by `RetryBudget`, which lets
retries be only a share of recent traffic.
"""

from __future__ import annotations

import math
import random
import re
import time
from datetime import UTC
from email.utils import parsedate_to_datetime

from gateway.resilience.window import Clock, SlidingCounts

_DELAY_SECONDS = re.compile(r"\d+(?:\.\d+)?")  # RFC 9110 says digits only; some servers send a fraction


def full_jitter_backoff(attempt: int, base_seconds: float, cap_seconds: float, rng: random.Random) -> float:
    """A wait drawn from [0, min(cap, base * 2**attempt)): AWS's "full jitter".

    `attempt` counts from 0 for the first retry. Spreading waits over the whole range keeps
    clients that failed together from retrying together.
    """
    if attempt < 0:
        raise ValueError(f"attempt counts from 0, got {attempt}")
    # 2**attempt as a float overflows past ~1024; the cap is reached long before that.
    ceiling = cap_seconds if attempt >= 64 else min(cap_seconds, base_seconds * 2**attempt)
    return rng.random() * max(0.0, ceiling)


def parse_retry_after(header_value: str | None, now: float, max_seconds: float = 3600.0) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).

    `now` is wall-clock POSIX seconds (time.time()), needed for the date form. A date already
    past means "now" and gives 0.0. Absent, unparseable, negative, or longer than `max_seconds`
    (a provider asking for hours is not going to be waited for) gives None.
    """
    if header_value is None:
        return None
    text = header_value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        until = _seconds_until_http_date(text, now)
        if until is None:
            return None
        seconds = max(0.0, until)
    if not math.isfinite(seconds) or seconds > max_seconds:
        return None
    return seconds


def _seconds_until_http_date(text: str, now: float) -> float | None:
    # parsedate_to_datetime reads all three forms RFC 9110 makes recipients accept:
    # IMF-fixdate, RFC 850, and asctime. HTTP dates are always GMT; asctime carries no zone.
    if not text or text[0].isdigit():
        return None  # every HTTP-date opens with a day name; "1e3" or "12abc" is a broken delay
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC).timestamp() - now
    return moment.timestamp() - now


class RetryBudget:
    """Retries may be at most `ratio` of the calls in the window, plus `min_retries` per window.

    The floor lets a quiet gateway still retry now and then; the ratio keeps a busy one from
    multiplying its load on a provider that is already failing. Count each original call with
    `record_call()` (not the retries), ask `can_retry()` before a retry, and `record_retry()`
    when it goes out.
    """

    def __init__(
        self,
        ratio: float = 0.2,
        min_retries: int = 3,
        window_seconds: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if min_retries < 0:
            raise ValueError(f"min_retries must not be negative, got {min_retries}")
        self.ratio = ratio
        self._min_retries = min_retries
        self._counts = SlidingCounts(("calls", "retries"), window_seconds, clock)

    @property
    def ratio(self) -> float:
        return self._ratio

    @ratio.setter
    def ratio(self, ratio: float) -> None:
        """A reload may change the ratio; the calls and retries already counted stay."""
        if ratio < 0 or not math.isfinite(ratio):
            raise ValueError(f"ratio must be a non-negative number, got {ratio}")
        self._ratio = ratio

    def record_call(self) -> None:
        self._counts.add("calls")

    def record_retry(self) -> None:
        self._counts.add("retries")

    def can_retry(self) -> bool:
        allowed = self._min_retries + self._ratio * self._counts.total("calls")
        # The tolerance keeps float error in ratio * calls from costing a whole retry.
        return self._counts.total("retries") + 1 <= allowed + 1e-9

