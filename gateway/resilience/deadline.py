"""How long one provider attempt may take, so a hanging provider costs a slice of the deadline, not all of it.

Each provider in the plan has a limit of its own: its `timeout_seconds`, or less once its recent
latency is known (an answer far past its p99 is already a failure; see
LatencyTracker.slow_after). Of the time left before the request's deadline, every provider
still after this one keeps what its own limit needs, but at most a fair share
(time left / providers left); this attempt gets the rest, never less than its fair share and
never more than its own limit.

    deadline 2 s, two providers, nothing learned yet:      first 1.0 s, second what is left
    the second known to answer within 0.2 s (4 x p99):     first 1.8 s, second 0.2 s and more
    no deadline:                                           each its own limit
"""

from __future__ import annotations

from collections.abc import Sequence


def attempt_seconds(remaining: float | None, own_limit: float, later_limits: Sequence[float]) -> float:
    """Seconds this attempt may take; `remaining` is the time left before the deadline (None: none)."""
    if remaining is None:
        return own_limit
    remaining = max(0.0, remaining)
    fair_share = remaining / (1 + len(later_limits))
    kept_for_later = sum(min(fair_share, limit) for limit in later_limits)
    return min(own_limit, max(fair_share, remaining - kept_for_later))
