"""OpenTelemetry traces: a server span per request, a client span per provider try, `traceparent` upstream.

Optional (`pip install 'rerank-gateway[otel]'`) and off unless asked for: by `[tracing] enabled`,
or, left unset, by the standard variables (`OTEL_TRACES_EXPORTER` other than `none`,
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); `OTEL_SDK_DISABLED=true`
wins over everything. Export is OTLP over HTTP (protobuf) through a batch processor, so a slow
or absent collector costs a background thread, never a request. The SDK reads its other
`OTEL_*` variables itself (sampler, resource attributes, exporter headers and timeout).

Off, `Tracing.off()` answers every hook at once: the edge checks `enabled` and takes its
untraced path, a provider try enters a shared do-nothing context manager, and the upstream
headers are the client's own dict. opentelemetry is imported only when tracing is on.

The trace context a provider try sends upstream travels in a ContextVar, request-scoped as the
attempts in trace.py are: set for the duration of one try, read by the provider client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("gateway.tracing")

_upstream_headers: ContextVar[Mapping[str, str] | None] = ContextVar("upstream_trace_headers", default=None)

_ON_VALUES = ("true", "1", "yes", "on")


def tracing_wanted(enabled: bool | None, otlp_endpoint: str | None, environ: Mapping[str, str]) -> bool:
    """Whether config and the standard OTEL_* variables turn tracing on (see the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _ON_VALUES:
        return False
    if enabled is not None:
        return enabled
    if otlp_endpoint:
        return True
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def with_trace_context(headers: dict[str, str]) -> dict[str, str]:
    """A provider call's headers: the client's own, plus `traceparent` while a traced try runs."""
    extra = _upstream_headers.get()
    return headers if extra is None else {**headers, **extra}


class _Attempt:
    """What a provider try's span is told while it runs; the do-nothing one when tracing is off."""

    recording = False  # whether tokens() is worth working out a count for

    def tokens(self, count: int) -> None:
        return None


_NO_ATTEMPT = _Attempt()


class _NoSpan:
    """The context manager of a provider try when tracing is off: enters and leaves, nothing else."""

    def __enter__(self) -> _Attempt:
        return _NO_ATTEMPT

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None


_NO_SPAN = _NoSpan()


class _TracedAttempt(_Attempt):
    recording = True

    def __init__(self, span: Span) -> None:
        self.span = span

    def tokens(self, count: int) -> None:
        self.span.set_attribute("rerank.tokens", count)


class Tracing:
    """The gateway's tracer, or nothing: built once per process (create_app), shut down with it."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self._tracer: Tracer | None = provider.get_tracer("rerank-gateway") if provider is not None else None

    @classmethod
    def off(cls) -> Tracing:
        return cls()

    @classmethod
    def exporting_to(
        cls, exporter: SpanExporter, service_name: str | None = "rerank-gateway", batch: bool = True
    ) -> Tracing:
        """Tracing on, its spans handed to `exporter` (batched; `batch=False` for tests' in-memory exporter).

        `service_name` None: the SDK's own (OTEL_SERVICE_NAME).
        """
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        # Resource.create adds OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; what is passed here wins.
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name} if service_name else {}))
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        return cls(provider)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def shutdown(self) -> None:
        """Flush what is queued and stop the export thread."""
        if self._provider is not None:
            self._provider.shutdown()

    @contextmanager
    def server_span(self, method: str, route: str, path: str, headers: Mapping[str, str]) -> Iterator[Span]:
        """The request's span, a child of the client's W3C `traceparent` when it sent one, current while it runs."""
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        assert self._tracer is not None, "server_span is for an enabled Tracing"
        parent = TraceContextTextMapPropagator().extract(headers)
        attributes = {"http.request.method": method, "http.route": route, "url.path": path}
        with self._tracer.start_as_current_span(
            f"{method} {route}", context=parent, kind=trace.SpanKind.SERVER, attributes=attributes,
            record_exception=False, set_status_on_exception=False,  # the edge turns every error into a response
        ) as span:
            yield span

    def attempt(
        self, provider: str, pairs: int, panic: bool = False, hedged: bool = False, purpose: str = "request"
    ) -> _NoSpan | _AttemptSpan:
        """The context manager of one try at a provider: its span, and `traceparent` for its HTTP calls."""
        if self._tracer is None:
            return _NO_SPAN
        return _AttemptSpan(self._tracer, provider, pairs, panic, hedged, purpose)


class _AttemptSpan:
    """One provider try's client span; its outcome is the try's: ok, the failure's kind, or cancelled."""

    def __init__(self, tracer: Tracer, provider: str, pairs: int, panic: bool, hedged: bool, purpose: str) -> None:
        self._tracer = tracer
        self._attributes: dict[str, Any] = {
            "rerank.provider": provider, "rerank.pairs": pairs, "rerank.panic": panic, "rerank.hedged": hedged,
            "rerank.probe": purpose == "probe", "rerank.purpose": purpose,
        }
        self._name = f"rerank upstream {provider}"

    def __enter__(self) -> _Attempt:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._span = self._tracer.start_span(self._name, kind=trace.SpanKind.CLIENT, attributes=self._attributes)
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(self._span))
        self._token = _upstream_headers.set(carrier)
        return _TracedAttempt(self._span)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        from opentelemetry.trace import Status, StatusCode

        _upstream_headers.reset(self._token)
        if exc is None:
            outcome = "ok"
        elif isinstance(exc, asyncio.CancelledError):
            outcome = "cancelled"  # a hedge won, the request's deadline passed, or the client left
        else:
            outcome = str(getattr(exc, "kind", type(exc).__name__))  # a ProviderFailure's kind
        self._span.set_attribute("rerank.outcome", outcome)
        if outcome not in ("ok", "cancelled"):
            self._span.set_status(Status(StatusCode.ERROR, outcome))
        self._span.end()


def end_server_span(span: Span, status: int, attributes: Mapping[str, Any]) -> None:
    """What the edge learned by the end of the request, on its span; 5xx marks it failed."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("http.response.status_code", status)
    span.set_attributes({key: value for key, value in attributes.items() if value is not None})
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


def build_tracing(
    enabled: bool | None, otlp_endpoint: str | None, service_name: str, environ: Mapping[str, str]
) -> Tracing:
    """The process's Tracing from config and environment; off (with a warning) if the extra is missing."""
    if not tracing_wanted(enabled, otlp_endpoint, environ):
        return Tracing.off()
    try:
        exporter = _exporter(otlp_endpoint, environ)
    except ImportError:
        log.warning("tracing is on but OpenTelemetry is not installed: pip install 'rerank-gateway[otel]'; "
                    "serving without traces")
        return Tracing.off()
    return Tracing.exporting_to(exporter, None if environ.get("OTEL_SERVICE_NAME") else service_name)


def _exporter(otlp_endpoint: str | None, environ: Mapping[str, str]) -> SpanExporter:
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # The config key is a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is: the signal's path follows;
    # the traces variable is the whole URL. Headers, timeout and compression: the exporter's variables.
    base = otlp_endpoint or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") if not otlp_endpoint else None
    if endpoint is None and base:
        endpoint = base.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint)  # None: the SDK's default, localhost:4318
