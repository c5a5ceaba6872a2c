"""Every error the gateway answers with, in one tree.

    GatewayError                  status, error type and headers at class level
    ├── ClientError               the request itself is wrong: no provider is called
    │   ├── BadRequest            400: body is not JSON or not UTF-8
    │   ├── InvalidRequest        422: JSON, but a field is missing or of the wrong kind
    │   ├── PayloadTooLarge       413: over a configured limit
    │   ├── NotFound              404: no such endpoint
    │   ├── MethodNotAllowed      405: with Allow
    │   ├── Unauthorized          401: client or admin key missing or wrong
    │   ├── ModelNotAllowed       403: the client's key may not use this model; names it
    │   ├── ClientRateLimited     429, with Retry-After: over a client's or team's rate or concurrency
    │   └── UnknownModel          404: the model is not served; names the ones that are
    └── UpstreamError             no provider could answer
        ├── AllProvidersFailed    502: providers were called and failed (see AllProvidersFailed.of)
        │   ├── UpstreamTimeout   504: ... and the last provider tried ran out of time
        │   ├── BudgetExhausted   429: nobody called; those passed over are over budget or rate limited
        │   │   └── RateLimited   429: ... rate limited only
        │   └── ProvidersBackingOff
        │                         503: nobody called; some are in back-off (breaker open, refusing)
        ├── UpstreamRejected      502: a provider refused the request in a way another would too
        └── DeadlineExceeded      504: the request's deadline ran out before any answer

    ProviderFailure               one provider step failed or was skipped; not shown to clients
                                  as such. `fallback_allowed` says whether the next may be tried.

Errors the gateway raises about the client's own request never trigger a fallback: only
ProviderFailure does, and only when the failure is the provider's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Self

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class GatewayError(Exception):
    """An answer the gateway gives itself: status, type and headers belong to the class.

    An instance only adds its message (and, where a class says so, the values its headers are
    made from): nothing about an error is changed after it was raised.
    """

    status: int = 500
    error_type: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> Mapping[str, str]:
        return _NO_HEADERS


class WithRetryAfter:
    """Mixed into an error that tells the client when to come back: Retry-After, in whole seconds."""

    retry_after_seconds: int = 1

    def come_back_in(self, seconds: int) -> Self:
        """The error, saying when to come back (at least 1 s: 0 would invite a retry at once); set before it is raised."""
        self.retry_after_seconds = max(1, seconds)
        return self

    @property
    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class ClientError(GatewayError):
    status = 400
    error_type = "invalid_request"


class BadRequest(ClientError):
    status = 400
    error_type = "bad_request"


class InvalidRequest(ClientError):
    status = 422
    error_type = "invalid_request"


class PayloadTooLarge(ClientError):
    status = 413
    error_type = "payload_too_large"


class NotFound(ClientError):
    status = 404
    error_type = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    error_type = "method_not_allowed"

    def __init__(self, message: str, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allowed = allowed

    @property
    def headers(self) -> Mapping[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class Unauthorized(ClientError):
    status = 401
    error_type = "unauthorized"

    @property
    def headers(self) -> Mapping[str, str]:
        # RFC 9110 15.5.2: a 401 names the scheme that would be accepted (RFC 6750's Bearer).
        return {"WWW-Authenticate": "Bearer"}


class ModelNotAllowed(ClientError):
    status = 403
    error_type = "model_not_allowed"


class ClientRateLimited(WithRetryAfter, ClientError):
    """Over a client's or its team's requests or documents per minute, or its requests in flight."""

    status = 429
    error_type = "rate_limited"


class UnknownModel(ClientError):
    status = 404
    error_type = "model_not_found"


class HttpError(ClientError):
    """An HTTP error aiohttp itself raised (a malformed request line, say), under its own status."""

    error_type = "http_error"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Overloaded(WithRetryAfter, GatewayError):
    """The process lacks what it needs to serve the request now (descriptors, memory): come back soon."""

    status = 503
    error_type = "overloaded"


class UpstreamError(GatewayError):
    status = 502
    error_type = "upstream_error"


class AllProvidersFailed(UpstreamError):
    """Nobody answered. `retry_after_seconds`: when the first provider passed over or failed is
    expected back (its budget window, rate limit or next probe), when that is known for all of them."""

    error_type = "all_providers_failed"

    def __init__(self, model: str, failures: list[ProviderFailure], retry_after_seconds: int | None = None) -> None:
        if failures:
            reasons = "; ".join(str(f) for f in failures)
        else:
            reasons = "no provider is configured and usable for this request"
        super().__init__(f"no provider could score the request for model {model!r}: {reasons}")
        self.failures = failures
        self.retry_after_seconds = retry_after_seconds

    @property
    def headers(self) -> Mapping[str, str]:
        return _NO_HEADERS if self.retry_after_seconds is None else {"Retry-After": str(self.retry_after_seconds)}

    @staticmethod
    def of(model: str, failures: list[ProviderFailure], now: datetime) -> AllProvidersFailed:
        """The error that says best why nobody answered, when causes combine:

        - a provider was called and failed: 502 (504 when the last one called ran out of time);
        - nobody was called, and some were in back-off (breaker open, refusing our key): 503;
        - nobody was called, and those that will come back were over budget or rate limited: 429;
        - nobody could be called by config alone (disabled, no key, canary): 502.
        Retry-After, on each, is the earliest end among those that will come back, when every
        failure's end is known (a provider that failed with its breaker still closed may answer now).
        """
        retry_after = _retry_after(failures, now)
        attempted = [f for f in failures if not f.skipped]
        if attempted:
            if attempted[-1].timed_out:
                return UpstreamTimeout(model, failures, retry_after)
            return AllProvidersFailed(model, failures, retry_after)
        kinds = {f.kind for f in failures}
        if kinds & BACKOFF_KINDS:
            return ProvidersBackingOff(model, failures, retry_after)
        if kinds & WAITING_KINDS and retry_after is not None:
            limited = BudgetExhausted if "budget" in kinds else RateLimited
            return limited(model, failures, retry_after)
        return AllProvidersFailed(model, failures, retry_after)


def _retry_after(failures: list[ProviderFailure], now: datetime) -> int | None:
    """Whole seconds until the first failure ends; None when one's end is unknown, or none ends by waiting."""
    ends: list[float] = []
    for failure in failures:
        if failure.kind in PERMANENT_KINDS:
            continue  # config keeps it out: waiting changes nothing
        end = failure.seconds_left(now)
        if end is None:
            return None
        ends.append(end)
    return max(1, math.ceil(min(ends))) if ends else None


class UpstreamTimeout(AllProvidersFailed):
    """The last provider tried ran out of time."""

    status = 504
    error_type = "upstream_timeout"


class BudgetExhausted(AllProvidersFailed):
    """Every provider that will come back is over a budget or rate limited: 429, with Retry-After."""

    status = 429
    error_type = "budget_exhausted"

    def __init__(self, model: str, failures: list[ProviderFailure], retry_after_seconds: int) -> None:
        super().__init__(model, failures, retry_after_seconds)


class RateLimited(BudgetExhausted):
    """As BudgetExhausted, with no budget among the causes: the providers' rate limits alone."""

    error_type = "rate_limited"


class ProvidersBackingOff(AllProvidersFailed):
    """Nobody was called: some providers are in back-off (breaker open, refusing our key)."""

    status = 503
    error_type = "providers_unavailable"


class UpstreamRejected(UpstreamError):
    error_type = "upstream_rejected"

    def __init__(self, failure: ProviderFailure) -> None:
        super().__init__(f"{failure.provider} rejected the request: {failure.reason}")
        self.failure = failure


class DeadlineExceeded(UpstreamError):
    status = 504
    error_type = "deadline_exceeded"


# Kinds of failure where the provider was never called; the rest are calls that failed.
SKIP_KINDS = frozenset({"unusable", "budget", "breaker_open", "quality", "rate_limited", "refusing"})
# Skipped until a probe finds out whether the provider is back: the gateway's back-off, not the client's.
BACKOFF_KINDS = frozenset({"breaker_open", "refusing"})
# Skipped until a known time: a budget window resets, a rate limit lifts.
WAITING_KINDS = frozenset({"budget", "rate_limited"})
# Skipped by config or verdict: no wait brings them back.
PERMANENT_KINDS = frozenset({"unusable", "quality"})


# Ran out of time: connecting, waiting for a byte, or in all. The gateway answers 504 for these.
TIMEOUT_KINDS = frozenset({"timeout", "connect_timeout", "read_timeout"})


# Worth another try on the same provider: rate limited, or a gateway/proxy in front of it
# failed. A 500 is the provider's own bug, and another 4xx is about the request; neither
# improves by asking the same provider again (the next provider may still be tried).
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})

def is_transient_status(status: int) -> bool:
    return status in TRANSIENT_STATUSES


@dataclass
class ProviderFailure(Exception):
    provider: str
    reason: str
    # One of a closed set, for metrics and logs. Calls that failed: timeout, connect_timeout,
    # read_timeout, dns, refused, tls, connect (reset or closed), too_large, malformed, redirect,
    # http_5xx, http_429, http_4xx, invalid_answer. Never called (SKIP_KINDS): unusable (no key, disabled,
    # cannot take an instruction), budget, breaker_open, quality (fails its canary), rate_limited
    # (a 429's Retry-After has not passed), refusing (it answered 401/403: back-off until a probe).
    kind: str
    fallback_allowed: bool = True
    transient: bool = False  # worth retrying on the same provider (connect error, 429, 502-504)
    retry_after: str | None = None  # the provider's Retry-After header, as sent
    resets_at: datetime | None = None  # kind "budget": when the overflowing window resets
    payer_over_budget: bool = False  # kind "budget": the request's client's or team's budget, not the provider's
    status: int | None = None  # the provider's HTTP status, when it answered one
    # When the provider may be called again, in seconds from when this was raised: its rate limit,
    # breaker cool-down or refusal back-off; None when unknown (it may answer right away).
    ends_in: float | None = None

    @property
    def skipped(self) -> bool:
        return self.kind in SKIP_KINDS

    @property
    def timed_out(self) -> bool:
        return self.kind in TIMEOUT_KINDS

    def seconds_left(self, now: datetime) -> float | None:
        """Seconds from `now` until this provider may be called again; None when unknown."""
        if self.resets_at is not None:
            return max(0.0, (self.resets_at - now).total_seconds())
        return self.ends_in

    def __str__(self) -> str:
        return f"{self.provider}: skipped: {self.reason}" if self.skipped else f"{self.provider}: {self.reason}"
