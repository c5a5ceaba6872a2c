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
    │   ├── RateLimited           429, with Retry-After: over a client's or team's rate or concurrency
    │   └── UnknownModel          404: the model is not served; names the ones that are
    └── UpstreamError             no provider could answer
        ├── AllProvidersFailed    502: every step of the request's plan failed or was skipped
        │   ├── UpstreamTimeout   504: ... and the last provider tried ran out of time
        │   └── BudgetExhausted   429, with Retry-After: every provider left is over a budget
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


class RateLimited(WithRetryAfter, ClientError):
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
    retry_after_seconds = 1


class UpstreamError(GatewayError):
    status = 502
    error_type = "upstream_error"


class AllProvidersFailed(UpstreamError):
    error_type = "all_providers_failed"

    def __init__(self, model: str, failures: list[ProviderFailure]) -> None:
        if failures:
            reasons = "; ".join(str(f) for f in failures)
        else:
            reasons = "no provider is configured and usable for this request"
        super().__init__(f"no provider could score the request for model {model!r}: {reasons}")
        self.failures = failures

    @staticmethod
    def of(model: str, failures: list[ProviderFailure], now: datetime) -> AllProvidersFailed:
        """The error that says best why nobody answered: a budget, a timeout, or failures."""
        refusals = [f.resets_at for f in failures if f.resets_at is not None]
        if refusals and all(f.skipped for f in failures):
            seconds = math.ceil((min(refusals) - now).total_seconds())
            return BudgetExhausted(model, failures).come_back_in(seconds)
        attempted = [f for f in failures if not f.skipped]
        if attempted and attempted[-1].timed_out:
            return UpstreamTimeout(model, failures)
        return AllProvidersFailed(model, failures)


class UpstreamTimeout(AllProvidersFailed):
    """The last provider tried ran out of time."""

    status = 504
    error_type = "upstream_timeout"


class BudgetExhausted(WithRetryAfter, AllProvidersFailed):
    """Every usable provider would overspend: 429, with Retry-After until a window resets."""

    status = 429
    error_type = "budget_exhausted"


class UpstreamRejected(UpstreamError):
    error_type = "upstream_rejected"

    def __init__(self, failure: ProviderFailure) -> None:
        super().__init__(f"{failure.provider} rejected the request: {failure.reason}")
        self.failure = failure


class DeadlineExceeded(UpstreamError):
    status = 504
    error_type = "deadline_exceeded"


# Kinds of failure where the provider was never called; the rest are calls that failed.
SKIP_KINDS = frozenset({"unusable", "budget", "breaker_open", "quality", "rate_limited"})


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
    # (a 429's Retry-After has not passed).
    kind: str
    fallback_allowed: bool = True
    transient: bool = False  # worth retrying on the same provider (connect error, 429, 502-504)
    retry_after: str | None = None  # the provider's Retry-After header, as sent
    resets_at: datetime | None = None  # kind "budget": when the overflowing window resets
    payer_over_budget: bool = False  # kind "budget": the request's client's or team's budget, not the provider's

    @property
    def skipped(self) -> bool:
        return self.kind in SKIP_KINDS

    @property
    def timed_out(self) -> bool:
        return self.kind in TIMEOUT_KINDS

    def __str__(self) -> str:
        return f"{self.provider}: skipped: {self.reason}" if self.skipped else f"{self.provider}: {self.reason}"
