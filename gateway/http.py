"""HTTP edges: the rerank handler, the edge middleware (ids, errors, logs, metrics), small endpoints.

Errors are raised where they happen and turned into a response here, once, with the same
`{"error": {"type", "message", "request_id"}}` body everywhere.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.cache import CachePolicy
from gateway.dialects import RERANK_ROUTES, DialectChooser
from gateway.errors import (
    BadRequest,
    DeadlineExceeded,
    GatewayError,
    HttpError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from gateway.limits import check_limits
from gateway.models import RerankResult
from gateway.observability.logs import REQUEST_LOGGER, ProviderAttempt, request_log_extra
from gateway.observability.trace import start_trace
from gateway.runtime import LiveGateway

log = logging.getLogger("gateway")
request_log = logging.getLogger(REQUEST_LOGGER)

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
    documents: int = 0
    result: RerankResult | None = None


RERANK_TRACE = web.RequestKey("rerank_trace", RerankTrace)


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request's edge: its id, its errors turned into the one error body, its log and metrics."""
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
    except Exception:
        # Never a traceback to the client; the log has it, tied to the request id.
        log.exception("unexpected error serving %s %s (request %s)", request.method, request.path, request_id)
        response, error_type = error_response(GatewayError("internal error; see the gateway log"), request_id), "internal_error"
    response.headers["X-Request-ID"] = request_id
    trace = request.get(RERANK_TRACE)
    if trace is not None and error_type is not None and trace.model != "none":
        # An error after the model was resolved (429, 502, 504) still says which model it was for.
        response.headers.setdefault("X-Rerank-Model", trace.model)
    if trace is not None:
        _observe(request, trace, response.status, time.perf_counter() - started, attempts, error_type)
    return response


def _observe(
    request: web.Request, trace: RerankTrace, status: int, seconds: float, attempts: list[ProviderAttempt], error_type: str | None
) -> None:
    """One metrics update and one log line per rerank request, whatever its outcome."""
    result = trace.result
    upstream_ms = result.upstream_ms if result is not None else sum(a.ms for a in attempts)
    metrics = request.app[LIVE].shared.metrics
    metrics.record_request(dialect=trace.dialect, model=trace.model, status=status, seconds=seconds,
                           upstream_seconds=upstream_ms / 1000)
    if result is not None:
        metrics.record_cache(model=trace.model, hits=result.cache_hits, misses=result.cache_misses)
        request.app[LIVE].shared.cache_stats.add(result.cache_hits, result.cache_misses, result.usage.cost_usd)
    request_log.info("rerank", extra=request_log_extra(
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
    ))


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


def rerank_handler(choose_dialect: DialectChooser) -> Any:
    async def handle(request: web.Request) -> web.Response:
        trace = request[RERANK_TRACE] = RerankTrace()
        async with request.app[LIVE].serving() as generation:
            require_client_key(request, generation.secrets.client_keys, generation.config.server.api_keys_env)
            server = generation.config.server
            payload = await _read_json(request, server.max_body_bytes)
            dialect = choose_dialect(payload)
            trace.dialect = dialect.name
            rerank = dialect.decode(payload, request.match_info)
            trace.documents = len(rerank.documents)
            check_limits(rerank, server)
            trace.model = generation.service.resolve_model(rerank.model)
            seconds = request_deadline(request, server.request_timeout_seconds)
            policy = CachePolicy.from_header(request.headers.get("Cache-Control"))
            deadline = asyncio.get_running_loop().time() + seconds
            try:
                async with asyncio.timeout_at(deadline):
                    result = trace.result = await generation.service.rerank(rerank, policy, deadline)
            except TimeoutError:
                raise DeadlineExceeded(f"no answer within the request's deadline of {seconds:g}s") from None
        headers = {
            "X-Rerank-Provider": result.provider,
            "X-Rerank-Model": result.model,
            "X-Rerank-Cache": f"hits={result.cache_hits}; misses={result.cache_misses}",
        }
        return json_response(dialect.encode(rerank, result, request[REQUEST_ID]), headers=headers)

    return handle


def require_client_key(request: web.Request, keys: tuple[bytes, ...], keys_env: str | None) -> None:
    """With client auth on, a rerank request needs `Authorization: Bearer <one of the keys>`."""
    if keys_env is None:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    presented = given.strip().encode()
    # Compare against every key, in constant time each: timing tells nothing about which matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    if scheme.lower() != "bearer" or not matched:
        raise Unauthorized("this gateway needs Authorization: Bearer <client key>")


def request_deadline(request: web.Request, configured: float) -> float:
    """Seconds this request may take: the configured limit, or less if the client asks."""
    asked = request.headers.get("X-Request-Timeout")
    if asked is None:
        return configured
    try:
        seconds = float(asked)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise BadRequest(f"X-Request-Timeout: expected a positive number of seconds, got {asked[:40]!r}")
    return min(seconds, configured)


async def _read_json(request: web.Request, max_bytes: int) -> Any:
    body = await _read_body(request, max_bytes)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "utf-8" in str(exc).lower():
            raise BadRequest("body: not valid UTF-8") from None
        raise BadRequest(f"body: not valid JSON ({exc})") from None
    reject_duplicate_keys(body)
    return payload


# The keys any dialect reads. JSON parsers disagree on a repeated key (orjson keeps the last,
# others the first), so a body that repeats one could mean one thing to a proxy or WAF in front
# and another here: refuse it rather than guess.
_MEANINGFUL_KEYS = ("query", "queries", "documents", "passages", "texts", "text", "model", "top_n",
                    "instruction", "task", "return_documents", "raw_scores", "return_text", "rank_fields")
# Any of them in quotes, found at every `"`, overlapping ones too: one pass over the body.
_QUOTED_KEY = re.compile(rb'"(?=(' + b"|".join(re.escape(key.encode()) for key in _MEANINGFUL_KEYS) + rb')")')


def reject_duplicate_keys(body: bytes) -> None:
    """422 when an object repeats a key the gateway reads; a key inside a string cannot match."""
    # Cheap filter first: inside a JSON string a quote is escaped, so `"query"` appears in the
    # raw bytes only as a key (or a string value exactly "query"). Most bodies stop here.
    quoted = _QUOTED_KEY.findall(body)
    if len(quoted) == len(set(quoted)):
        return
    json.loads(body, object_pairs_hook=_unique_object)


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise InvalidRequest(f"body: key {key!r} appears twice in one object")
        seen.add(key)
    return dict(pairs)


async def _read_body(request: web.Request, max_bytes: int) -> bytes:
    """The body, refused as soon as it is known to be over the limit (before reading it all)."""
    too_large = PayloadTooLarge(f"body: larger than server.max_body_bytes = {max_bytes}")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    body = await request.content.read(max_bytes + 1)
    while len(body) <= max_bytes and not request.content.at_eof():
        chunk = await request.content.read(max_bytes + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > max_bytes:
        raise too_large
    if not body:
        raise BadRequest("body: empty; expected a JSON object")
    return body


async def list_models(request: web.Request) -> web.Response:
    config = request.app[LIVE].config
    data = [
        {"id": name, "object": "model", "aliases": model.aliases, "fallback": model.fallback}
        for name, model in sorted(config.models.items())
    ]
    return json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})
