"""Every error the gateway answers with, in one tree.

    GatewayError                  has an HTTP status and an error type for the client
    ├── ClientError               the request itself is wrong: no provider is called
    │   ├── BadRequest            400: body is not JSON or not UTF-8
    │   ├── InvalidRequest        422: JSON, but a field is missing or of the wrong kind
    │   ├── PayloadTooLarge       413: over a configured limit
    │   ├── NotFound              404: no such endpoint
    │   ├── Unauthorized          401: client or admin key missing or wrong
    │   └── UnknownModel          404: the model is not served; names the ones that are
    └── UpstreamError             no provider could answer
        ├── AllProvidersFailed    502, or 504 when the last failure was a timeout
        ├── UpstreamRejected      502: a provider refused the request in a way another would too
        ├── DeadlineExceeded      504: the request's deadline ran out before any answer
        └── BudgetExhausted       429: every provider left for the model is over a budget

    ProviderFailure               one provider call failed; not shown to clients as such.
                                  `fallback_allowed` says whether the next provider may be tried.

Errors the gateway raises about the client's own request never trigger a fallback: only
ProviderFailure does, and only when the failure is the provider's.
"""

from __future__ import annotations

from dataclasses import dataclass


class GatewayError(Exception):
    status: int = 500
    error_type: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


class Unauthorized(ClientError):
    status = 401
    error_type = "unauthorized"


class UnknownModel(ClientError):
    status = 404
    error_type = "model_not_found"


class UpstreamError(GatewayError):
    status = 502
    error_type = "upstream_error"


class AllProvidersFailed(UpstreamError):
    error_type = "all_providers_failed"

    def __init__(self, model: str, failures: list[ProviderFailure]) -> None:
        if failures:
            reasons = "; ".join(f"{f.provider}: {f.reason}" for f in failures)
        else:
            reasons = "no provider is configured and usable for this request"
        super().__init__(f"no provider could score the request for model {model!r}: {reasons}")
        self.failures = failures
        attempted = [f for f in failures if not f.skipped]
        if attempted and attempted[-1].timed_out:
            self.status = 504
            self.error_type = "upstream_timeout"


class UpstreamRejected(UpstreamError):
    error_type = "upstream_rejected"

    def __init__(self, failure: ProviderFailure) -> None:
        super().__init__(f"{failure.provider} rejected the request: {failure.reason}")
        self.failure = failure


class BudgetExhausted(AllProvidersFailed):
    """Every usable provider would overspend: 429, with Retry-After until a window resets."""

    def __init__(self, model: str, failures: list[ProviderFailure], retry_after_seconds: int) -> None:
        super().__init__(model, failures)
        self.status = 429
        self.error_type = "budget_exhausted"
        self.retry_after_seconds = retry_after_seconds


class DeadlineExceeded(UpstreamError):
    status = 504
    error_type = "deadline_exceeded"


@dataclass
class ProviderFailure(Exception):
    provider: str
    reason: str
    fallback_allowed: bool = True
    timed_out: bool = False
    skipped: bool = False  # never called: no key, disabled, over budget, breaker open, ...
    # One of a closed set, for metrics and logs: timeout, connect, http_5xx, http_429, http_4xx,
    # invalid_answer, skipped, budget, breaker_open.
    kind: str = "skipped"
    transient: bool = False  # worth retrying on the same provider (connect error, 429, 502-504)
    retry_after: str | None = None  # the provider's Retry-After header, as sent

    def __str__(self) -> str:
        return f"{self.provider}: {self.reason}"
