"""What a provider is doing now, in one word, for /readyz, /status and /metrics alike.

    usable        its recent calls answer (breaker closed, no refusal, within budget and rate limit)
    refusing      it answered 401/403: credentials, plan, or a discontinued service; out on a
                  growing back-off until a probe answers or its key or base_url change
    failing       errors or timeouts opened its breaker (open, or half open with a probe due)
    rate_limited  a 429 asked for no call until `until`
    over_budget   its budget or the gateway's cannot pay for new pairs until `until`
    canary_failing  the quality guard keeps it out (per model: `/metrics` leaves it to its gauge)
    erroring      still called (its breaker closed), but its last calls failed: not `usable`
                  until one answers
    unusable      config keeps it out by mistake: no API key
    disabled      config keeps it out on purpose (`enabled = false`)

The order above, from `refusing` down, is the order of precedence when causes combine: the cause
that lasts longest, or that an operator must fix, is the one named. Everything is read from the
live objects at the moment of the request (the breaker's state included), so two endpoints read at
the same moment agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from gateway.errors import ProviderFailure
from gateway.observability.metrics import ProviderStateName
from gateway.providers.client import ProviderClient
from gateway.resilience.health import ProviderHealth

Tone = Literal["ok", "warn", "bad", "off"]
_TONES: dict[str, Tone] = {
    "usable": "ok", "rate_limited": "warn", "over_budget": "warn", "erroring": "warn", "disabled": "off",
}


@dataclass(frozen=True, slots=True)
class ProviderState:
    name: ProviderStateName
    reason: str | None  # None while usable
    until: float | None = None  # wall clock: when it is tried again or its window resets; None: unknown
    status: int | None = None  # refusing: the HTTP status it answers

    @property
    def tone(self) -> Tone:
        return _TONES.get(self.name, "bad")

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")

    def as_json(self) -> dict[str, object]:
        return {"state": self.name, "reason": self.reason, "until": self.until, "status": self.status}


def provider_state(
    client: ProviderClient, health: ProviderHealth, over_budget_until: float | None, skip: ProviderFailure | None = None,
) -> ProviderState:
    """The provider's state; `skip` is the plan's word for one model (why_not), for its quality verdict."""
    now = time.time()
    if not client.config.enabled:
        return ProviderState("disabled", "disabled in config")
    unusable = client.unusable_reason(None)
    if unusable is not None:
        return ProviderState("unusable", unusable)
    refusal = health.refusal.current(client.identity)
    if refusal is not None:
        wait = health.refusal.seconds_until_probe(client.identity)
        retry = f"next try in {wait:.0f} s" if wait > 0 else "the next call is its probe"
        return ProviderState("refusing", f"{refusal.reason} ({refusal.consecutive} in a row; {retry})",
                             now + wait, refusal.status)
    breaker = health.breaker.status()
    if breaker.state != "closed":
        why = breaker.last_failure or "repeated failures"
        if breaker.seconds_until_probe is None:
            return ProviderState("failing", f"breaker half open after: {why}; the next call is its probe")
        return ProviderState("failing", f"breaker open after: {why}; next probe in {breaker.seconds_until_probe:.0f} s",
                             now + breaker.seconds_until_probe)
    if (limited := health.rate_limited_for()) > 0:
        return ProviderState("rate_limited", f"rate limited for {limited:.0f} s more (its 429's Retry-After)", now + limited)
    if over_budget_until is not None:
        return ProviderState("over_budget", "cannot pay for new pairs until its budget window resets", over_budget_until)
    if skip is not None and skip.kind == "quality":
        return ProviderState("canary_failing", skip.reason)
    if breaker.consecutive_failures > 0:
        # Usable means its recent calls answer: a failure the breaker has not acted on yet is news.
        calls = "call" if breaker.consecutive_failures == 1 else f"{breaker.consecutive_failures} calls"
        return ProviderState("erroring", f"its last {calls} failed ({breaker.last_failure}); still called, "
                                         "its breaker closed")
    return ProviderState("usable", None)
