"""The HTTP edge every request passes: its id, its errors turned into one body, its log line and metrics.

Errors are raised where they happen and turned into a response here, once, with the same
`{"error": {"type", "message", "request_id"}}` body everywhere.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.clients import Client
from gateway.dialects import RERANK_ROUTES
from gateway.errors import (
    GatewayError,
    HttpError,
    MethodNotAllowed,
    NotFound,
    Overloaded,
)
from gateway.models import RerankResult
from gateway.observability.history import Outcome
from gateway.observability.logs import REQUEST_LOGGER, ProviderAttempt, RequestLog, request_log_fields
from gateway.observability.trace import start_trace
from gateway.observability.tracing import end_server_span
from gateway.runtime import LiveGateway, Shared

log = logging.getLogger("gateway")
# accept() and open() fail with these when a crowd of clients holds every descriptor, or memory runs out.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
request_log = RequestLog(logging.getLogger(REQUEST_LOGGER))

LIVE = web.AppKey("live", LiveGateway)
REQUEST_ID = web.RequestKey("request_id", str)

_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_JSON = "application/json"


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type=_JSON, headers=headers)


def request_id_of(request: web.Request) -> str:
    """The client's X-Request-ID when it is a sane token, else a fresh one."""
    given = request.headers.get("X-Request-ID")
    if given and _CLIENT_REQUEST_ID.fullmatch(given):
        return given
    return os.urandom(16).hex()  # 128 random bits as uuid4().hex gives, without building a UUID


@dataclass(slots=True)
class RerankTrace:
    """What the request log and metrics need to know about one rerank request."""

    dialect: str = "none"
    model: str = "none"  # the resolved model only: a client's string must not become a label
    requested_model: str | None = None  # what the client named, for the log line only
    documents: int = 0
    result: RerankResult | None = None
    quality: str | None = None  # "failing": served by a provider failing its canary
    client: Client | None = None  # whose key it came with; None: the gateway needs no key


RERANK_TRACE = web.RequestKey("rerank_trace", RerankTrace)


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request's edge: its id, its errors turned into the one error body, its log and metrics."""
    shared = request.app[LIVE].shared  # looked up once: each request.app[...] is a few Python calls
    tracing = shared.tracing
    if not tracing.enabled:
        return await _serve(request, handler, shared)
    route = request.match_info.route.resource
    with tracing.server_span(request.method, route.canonical if route else "unmatched", request.path,
                             request.headers) as span:
        response = await _serve(request, handler, shared)
        end_server_span(span, response.status, _span_attributes(request))
    return response


def _span_attributes(request: web.Request) -> dict[str, Any]:
    """What a request's span says beyond HTTP: its id and, for a rerank, what its log line says."""
    attributes: dict[str, Any] = {"rerank.request_id": request.get(REQUEST_ID)}
    trace = request.get(RERANK_TRACE)
    if trace is not None:
        attributes.update({"rerank.dialect": trace.dialect, "rerank.model": trace.model,
                           "rerank.documents": trace.documents})
        if trace.result is not None:
            attributes.update({"rerank.provider": trace.result.provider, "rerank.cache_hits": trace.result.cache_hits,
                               "rerank.cache_misses": trace.result.cache_misses, "rerank.tokens": trace.result.usage.tokens})
    return attributes


async def _serve(request: web.Request, handler: Handler, shared: Shared) -> web.StreamResponse:
    request_id = request[REQUEST_ID] = request_id_of(request)
    started = time.perf_counter()
    attempts = start_trace()
    error_type = None
    try:
        response = await handler(request)
    except GatewayError as exc:
        response, error_type = error_response(exc, request_id), exc.error_type
    except web.HTTPException as exc:
        error = _from_aiohttp(exc, request)
        response, error_type = error_response(error, request_id), error.error_type
    except Exception as exc:
        error = _unexpected(exc, request, request_id)
        response, error_type = error_response(error, request_id), error.error_type
    response.headers["X-Request-ID"] = request_id
    trace = request.get(RERANK_TRACE)
    if trace is not None and error_type is not None and trace.model != "none":
        # An error after the model was resolved (429, 502, 504) still says which model it was for.
        response.headers.setdefault("X-Rerank-Model", trace.model)
    if trace is not None:
        _observe(request, shared, trace, response.status, time.perf_counter() - started, attempts, error_type)
    return response


def _unexpected(exc: Exception, request: web.Request, request_id: str) -> GatewayError:
    """What the client hears of an error nobody raised for it: never a traceback, and never a 500
    for a lack of descriptors or memory, which a crowd of clients causes and which passes."""
    if isinstance(exc, OSError) and exc.errno in OUT_OF_RESOURCES:
        log.warning("cannot serve %s %s (request %s): %s", request.method, request.path, request_id, exc)
        return Overloaded(f"the gateway is out of resources ({exc.strerror}); retry shortly")
    log.exception("unexpected error serving %s %s (request %s)", request.method, request.path, request_id)
    return GatewayError("internal error; see the gateway log")


def _observe(
    request: web.Request, shared: Shared, trace: RerankTrace, status: int, seconds: float, attempts: list[ProviderAttempt],
    error_type: str | None,
) -> None:
    """One metrics update and one log line per rerank request, whatever its outcome."""
    result = trace.result
    upstream_ms = result.upstream_ms if result is not None else sum(a.ms for a in attempts)
    metrics = shared.metrics
    metrics.record_request(dialect=trace.dialect, model=trace.model, status=status, seconds=seconds,
                           upstream_seconds=upstream_ms / 1000)
    client = trace.client
    if client is not None:
        metrics.record_client_request(client=client.name, team=client.team_label, status=status,
                                      pairs=trace.documents, cost_usd=result.usage.cost_usd if result else 0.0)
    if result is not None:
        metrics.record_cache(model=trace.model, hits=result.cache_hits, misses=result.cache_misses)
        shared.cache_stats.add(result.cache_hits, result.cache_misses, result.usage.cost_usd)
    metrics.history.record_request(
        _outcome(result, error_type), result.cache_hits if result else 0, result.cache_misses if result else 0,
        ((a.provider, a.ms / 1000) for a in attempts if a.outcome == "ok"),
    )
    request_log.write(request_log_fields(
        request_id=request[REQUEST_ID],
        dialect=trace.dialect,
        model=trace.model,
        status=status,
        documents=trace.documents,
        cache_hits=result.cache_hits if result else 0,
        cache_misses=result.cache_misses if result else 0,
        upstream_ms=upstream_ms,
        total_ms=seconds * 1000,
        attempts=attempts,
        error_type=error_type,
        usage=result.usage if result else None,
        raw_scores=result.raw_scores if result else None,
        quality=trace.quality,
        requested_model=trace.requested_model,
        long_documents=result.long_documents if result else None,
        client=client.name if client is not None else None,
        team=client.team if client is not None else None,
    ))


def _outcome(result: RerankResult | None, error_type: str | None) -> Outcome:
    if error_type is not None or result is None:
        return "error"
    if result.degraded:
        return "lexical"
    return "cache" if result.cache_misses == 0 else "provider"


def error_response(exc: GatewayError, request_id: str) -> web.Response:
    """The one error body, with the headers the error's class carries."""
    body = {"error": {"type": exc.error_type, "message": exc.message, "request_id": request_id}}
    return json_response(body, status=exc.status, headers={"X-Rerank-Provider": "none", **exc.headers})


def _from_aiohttp(exc: web.HTTPException, request: web.Request) -> GatewayError:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = tuple(sorted(exc.allowed_methods))
        return MethodNotAllowed(f"{request.method} is not allowed on {request.path}", allowed)
    if exc.status == 404:
        return NotFound(f"no endpoint at {request.path}; rerank endpoints: {', '.join(RERANK_ROUTES)}")
    return HttpError(exc.reason, exc.status)
