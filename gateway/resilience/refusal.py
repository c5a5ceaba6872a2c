"""A provider that refuses our credentials (401/403): kept out on a growing back-off, not retried as if transient.

A 401 or 403 says the key, the plan or the service itself is gone, which no number of quick
retries fixes; the breaker's fixed cool-down would call it every 15 s for good and show it as
"half open" between calls. Instead:

    refused     a 401/403 answer: out until the back-off ends (15 s, then 30 s, ... up to 10 min)
    probe due   the back-off ended: the next call is let through as the probe, the others wait
                another back-off (`claim_probe`)
    answered    any answer ends the refusal at once: a provider that recovers serves again

A refusal belongs to the credentials it was seen with (`identity`: the provider's URL and key):
a reload that changes either starts afresh, without waiting out a back-off learned for the old ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from gateway.resilience.window import Clock

REFUSAL_STATUSES = frozenset({401, 403})
FIRST_BACKOFF_SECONDS = 15.0
MAX_BACKOFF_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class AuthRefusal:
    status: int
    reason: str  # "HTTP 403: " and the provider's own message
    identity: str
    consecutive: int  # refusals in a row, probes included
    since: float  # wall-clock time of the first of them
    next_probe_at: float  # clock time


def backoff_seconds(consecutive: int) -> float:
    """15 s after the first refusal, doubling with each one in a row, at most 10 min."""
    return float(min(FIRST_BACKOFF_SECONDS * 2 ** max(consecutive - 1, 0), MAX_BACKOFF_SECONDS))


class RefusalTracker:
    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._refusal: AuthRefusal | None = None

    def current(self, identity: str) -> AuthRefusal | None:
        """The refusal that holds for these credentials; one seen with others is forgotten."""
        if self._refusal is not None and self._refusal.identity != identity:
            self._refusal = None
        return self._refusal

    def seconds_until_probe(self, identity: str) -> float:
        """0 when a call may go out (no refusal, or its back-off ended)."""
        refusal = self.current(identity)
        return 0.0 if refusal is None else max(0.0, refusal.next_probe_at - self._clock())

    def claim_probe(self, identity: str) -> bool:
        """Whether a call may go out now; the one that ends a back-off holds the others off for another."""
        refusal = self.current(identity)
        if refusal is None:
            return True
        now = self._clock()
        if now < refusal.next_probe_at:
            return False
        # While the probe is out nobody else goes: its answer decides.
        self._refusal = replace(refusal, next_probe_at=now + backoff_seconds(refusal.consecutive))
        return True

    def refused(self, status: int, reason: str, identity: str) -> AuthRefusal:
        previous = self.current(identity)
        consecutive = 1 if previous is None else previous.consecutive + 1
        since = time.time() if previous is None else previous.since
        self._refusal = AuthRefusal(status, reason, identity, consecutive, since,
                                self._clock() + backoff_seconds(consecutive))
        return self._refusal

    def answered(self) -> bool:
        """The provider answered: the refusal (if any) is over. True when there was one."""
        ended = self._refusal is not None
        self._refusal = None
        return ended

