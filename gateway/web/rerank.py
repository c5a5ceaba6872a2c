"""The rerank endpoints: read and check the body, decode it, ask the service, encode the answer.

Also /v1/models, the list of what a client may ask for.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

import orjson
from aiohttp import web

from gateway.cache import CachePolicy
from gateway.clients import Client, RateLimiter
from gateway.dialects import DialectChooser
from gateway.errors import BadRequest, ClientRateLimited, DeadlineExceeded, InvalidRequest, PayloadTooLarge
from gateway.models import RerankResult
from gateway.runtime import Generation
from gateway.web.edge import LIVE, REQUEST_ID, RERANK_TRACE, RerankTrace, json_response
from gateway.web.request_limits import check_limits


def rerank_handler(choose_dialect: DialectChooser) -> Any:
    async def handle(request: web.Request) -> web.Response:
        trace = request[RERANK_TRACE] = RerankTrace()
        live = request.app[LIVE]
        with live.serving() as generation:
            # Before the body is read: a request without a valid key costs no more than its head.
            client = trace.client = generation.client_book.identify(request.headers.get("Authorization"))
            server = generation.config.server
            payload = await _read_json(request, server.max_body_bytes)
            dialect = choose_dialect(payload)
            trace.dialect = dialect.name
            rerank = dialect.decode(payload, request.match_info)
            trace.documents = len(rerank.documents)
            check_limits(rerank, server)
            # Read before the model is resolved: a 400 for the header carries no X-Rerank-Model.
            seconds = request_deadline(request, server.request_timeout_seconds)
            trace.requested_model = rerank.model
            trace.model = generation.service.resolve_model(rerank.model)
            policy = CachePolicy.from_header(request.headers.get("Cache-Control"))
            deadline = asyncio.get_running_loop().time() + seconds
            if client is not None:
                client.check_model(trace.model, rerank.model)
                await admit_rates(live.shared.rates, client, len(rerank.documents))
            budgets, caps = (client.budgets, client.caps) if client is not None else ((), ())
            with live.shared.in_flight.holding(caps):
                try:
                    async with asyncio.timeout_at(deadline):
                        result = trace.result = await generation.service.rerank(
                            rerank, policy, deadline, trace.model, budgets)
                except TimeoutError:
                    raise DeadlineExceeded(f"no answer within the request's deadline of {seconds:g}s") from None
            failing = _failing_provider(generation, result, rerank.instruction)
        headers = {
            "X-Rerank-Provider": result.provider,
            "X-Rerank-Model": result.model,
            "X-Rerank-Cache": f"hits={result.cache_hits}; misses={result.cache_misses}",
        }
        if failing is not None:
            # Served because nothing better could answer (or action = "warn"): the client may discount it.
            trace.quality = "failing"
            # Failing in the query's language, where the plan went by the canary's lines of it: the client knows which.
            language = generation.quality_guard.judged_in(result.model, failing, result.language)
            headers["X-Rerank-Quality"] = "failing" if language is None else f"failing; language={language}"
            request.app[LIVE].shared.metrics.record_failing_answer(model=result.model, provider=failing)
        return json_response(dialect.encode(rerank, result, request[REQUEST_ID]), headers=headers)

    return handle


def _failing_provider(generation: Generation, result: RerankResult, instruction: str | None) -> str | None:
    """The provider failing its canary whose scores this answer carries, if any.

    A cached answer carries the scores of the provider whose group it read: the plan's first.
    """
    if result.degraded:
        return None
    provider = result.provider
    if provider == "cache":
        provider = generation.router.first_choice(result.model, instruction, result.language)
    return provider if generation.quality_guard.failing_serves(result.model, provider, result.language) else None


async def admit_rates(rates: RateLimiter, client: Client, documents: int) -> None:
    """Count the request against its client's and team's per-minute rates, or 429 naming the full one."""
    if not client.rates:
        return
    refusal = await rates.admit(client.rates, documents)
    if refusal is not None:
        raise ClientRateLimited(refusal.message).come_back_in(refusal.retry_after_seconds)


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


_UTF8_BOM = b"\xef\xbb\xbf"


async def _read_json(request: web.Request, max_bytes: int) -> Any:
    body = await _read_body(request, max_bytes)
    # RFC 8259 8.1 lets a parser ignore a byte order mark; Windows tools (PowerShell 5) write one.
    body = body.removeprefix(_UTF8_BOM)
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
                    "instruction", "task", "return_documents", "raw_scores", "return_text", "rank_fields",
                    "max_tokens_per_doc", "truncate", "truncation_direction")
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
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    body = await request.content.read(max_bytes + 1)
    while len(body) <= max_bytes and not request.content.at_eof():
        chunk = await request.content.read(max_bytes + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > max_bytes:
        raise _too_large(max_bytes)
    if not body:
        raise BadRequest("body: empty; expected a JSON object")
    return body


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"body: larger than server.max_body_bytes = {max_bytes}")


async def list_models(request: web.Request) -> web.Response:
    config = request.app[LIVE].config
    data = [
        {"id": name, "object": "model", "aliases": model.aliases, "fallback": model.fallback}
        for name, model in sorted(config.models.items())
    ]
    return json_response({"object": "list", "data": data})
