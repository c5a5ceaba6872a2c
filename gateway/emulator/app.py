"""Local stand-ins for the rerank providers' public APIs, with fault injection.

One aiohttp app answers DeepInfra, Fireworks, Cohere (v1/v2) and TEI wire formats with
deterministic word-overlap scores, so development, tests, benchmarks and chaos tests run
without a network. `/_emulator/*` is the control API: fault rules, stats, reset.
All state lives on the app (one `EmulatorState` per app), never in this module.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.emulator.scores import QUIET_FAULT_MODES
from gateway.emulator.wire import NAN_MARK, PROVIDER_ROUTES, BadBody, Provider

PROVIDERS = ("deepinfra", "fireworks", "cohere", "tei")
# What each fault mode does, for `emulate --help` and the README (a test holds both to this list).
FAULT_MODE_HELP: dict[str, str] = {
    "status": "answer an HTTP error: `status` (400-599, default 503), `retry_after` seconds on a 429",
    "hang": "accept the call and never answer (until the client gives up)",
    "slow": "answer correctly after `delay_ms` (default 1000)",
    "garbage": "answer 200 with an HTML body that is not JSON",
    "drop": "close the connection without an answer",
    "wrong_count": "one result fewer than documents sent",
    "cut": "half the results",
    "nan": "a NaN score",
    "shuffle": "results out of the documented order",
    "out_of_range": "a result index past the documents sent",
    "duplicate_index": "two results with the same index",
    "rescale": "every probability cubed: the order kept, the values off",
    "template": "the instruction ignored and noise as large as the signal added: the order changes",
    "random": "a score fixed per pair and seed, blind to relevance",
}
FAULT_MODES = frozenset(FAULT_MODE_HELP)
assert QUIET_FAULT_MODES <= FAULT_MODES
# Faults that replace the whole answer, decided before the body is even validated,
# the way a broken upstream fails regardless of what was sent.
_TRANSPORT_FAULTS = frozenset({"status", "hang", "garbage", "drop"})

_HANG_SECONDS = 3600.0
_HANG_POLL_SECONDS = 0.05


@dataclass
class EmulatorConfig:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    api_key: str | None = None
    seed: int = 0
    # Tokens a (query, document) pair may take, as hosts of Qwen3-Reranker-8B allow: a longer
    # pair is refused (TEI with `truncate`: cut). None: no limit.
    context_tokens: int | None = 32_768


# --- state and faults ------------------------------------------------------------------

@dataclass(slots=True)
class FaultRule:
    provider: str  # a provider name or "*"
    mode: str
    status: int = 503
    retry_after: float | None = None
    delay_ms: float = 1000.0
    remaining: int | None = None  # None: until cleared


@dataclass
class EmulatorState:
    """What one emulator app remembers: fault rules, counters, the last body per provider."""

    config: EmulatorConfig
    rng: random.Random = field(init=False)
    rules: list[FaultRule] = field(default_factory=list)
    requests: dict[str, int] = field(init=False)
    documents: dict[str, int] = field(init=False)
    tokens: dict[str, int] = field(init=False)  # what the answers billed (or would have: TEI's carry no usage)
    last_body: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.reset()

    def reset(self) -> None:
        self.rules.clear()
        self.requests = dict.fromkeys(PROVIDERS, 0)
        self.documents = dict.fromkeys(PROVIDERS, 0)
        self.tokens = dict.fromkeys(PROVIDERS, 0)
        self.last_body = dict.fromkeys(PROVIDERS)

    def take_fault(self, provider: str) -> FaultRule | None:
        """The oldest rule matching this provider, spending one of its uses."""
        for rule in self.rules:
            if rule.provider in (provider, "*"):
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self.rules.remove(rule)
                return rule
        return None

    def latency_s(self) -> float:
        jitter = self.rng.uniform(0.0, self.config.jitter_ms) if self.config.jitter_ms else 0.0
        return (self.config.latency_ms + jitter) / 1000.0


EMULATOR_STATE: web.AppKey[EmulatorState] = web.AppKey("emulator_state", EmulatorState)


def _json(payload: Any, status: int = 200, *, nan: bool = False,
          headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps(payload)
    if nan:
        body = body.replace(b'"' + NAN_MARK.encode() + b'"', b"NaN", 1)
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


async def _hang(request: web.Request) -> None:
    # aiohttp does not cancel handlers when the client goes away (unless the runner opts in),
    # so watch the transport: otherwise every timed-out client leaves a sleeping task behind.
    deadline = time.monotonic() + _HANG_SECONDS
    while request.transport is not None and not request.transport.is_closing():
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(_HANG_POLL_SECONDS)


async def _transport_fault(request: web.Request, provider: Provider,
                           rule: FaultRule) -> web.Response:
    if rule.mode == "status":
        headers = {"Retry-After": f"{rule.retry_after:g}"} if rule.retry_after is not None else None
        return _json(provider.error_body(f"emulated fault: HTTP {rule.status}"), rule.status,
                     headers=headers)
    if rule.mode == "garbage":
        return web.Response(body=b"<html>upstream hiccup</html>", content_type="application/json")
    if rule.mode == "hang":
        await _hang(request)
        return _json(provider.error_body("emulated fault: hang ended"), 504)
    if request.transport is not None:  # "drop": the client sees a disconnect, not a status
        request.transport.close()
    return web.Response(status=499)  # never reaches the client; aiohttp drops the write


async def _serve(provider: Provider, request: web.Request) -> web.Response:
    started = time.perf_counter()
    state = request.app[EMULATOR_STATE]
    if (delay := state.latency_s()) > 0:
        await asyncio.sleep(delay)
    state.requests[provider.name] += 1
    key = state.config.api_key
    if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
        return _json(provider.error_body("invalid api key"), 401)
    try:
        body: Any = orjson.loads(await request.read())
        state.last_body[provider.name] = body
    except orjson.JSONDecodeError:
        body = None
    rule = state.take_fault(provider.name)
    if rule is not None and rule.mode in _TRANSPORT_FAULTS:
        return await _transport_fault(request, provider, rule)
    if rule is not None and rule.mode == "slow":
        await asyncio.sleep(rule.delay_ms / 1000.0)
    try:
        call = provider.decode(body)
    except BadBody as exc:
        return _json(provider.error_body(str(exc)), 422)
    limit = state.config.context_tokens
    over = None if limit is None else call.over_context(limit)
    if over is not None and limit is not None:
        if not call.truncate:
            return _json(provider.error_body(
                f"input validation error: pair {over[0]} has {over[1]} tokens, over the model's context of {limit} tokens"),
                provider.too_long_status)
        call = call.cut_to(limit)
    state.documents[provider.name] += len(call.documents)
    state.tokens[provider.name] += call.tokens()
    mode = rule.mode if rule is not None else None
    runtime_ms = int((time.perf_counter() - started) * 1000)
    scores = (call.misbehaving_scores(mode, state.config.seed) if mode in QUIET_FAULT_MODES
              else call.scores())
    answer = provider.encode(call, scores, mode, state.rng, runtime_ms)
    return _json(answer, nan=mode == "nan")


# --- control API ----------------------------------------------------------------------

def _is_int(value: Any, low: int, high: float = math.inf) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_duration(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _parse_rule(body: Any) -> FaultRule:
    if not isinstance(body, dict):
        raise BadBody("body must be a JSON object")
    # The client's values as sent, checked below: a missing provider or mode is None until then.
    provider: Any = body.get("provider")
    mode: Any = body.get("mode")
    rule = FaultRule(provider, mode, body.get("status", 503),
                     body.get("retry_after"), body.get("delay_ms", 1000.0), body.get("count"))
    problems = [message for broken, message in (
        (rule.provider not in (*PROVIDERS, "*"), f"unknown provider {rule.provider!r}"),
        (rule.mode not in FAULT_MODES, f"unknown mode {rule.mode!r}"),
        (not _is_int(rule.status, 400, 599), "'status' must be an integer from 400 to 599"),
        (rule.retry_after is not None and not _is_duration(rule.retry_after),
         "'retry_after' must be a non-negative number"),
        (not _is_duration(rule.delay_ms), "'delay_ms' must be a non-negative number"),
        (rule.remaining is not None and not _is_int(rule.remaining, 1),
         "'count' must be a positive integer or null"),
    ) if broken]
    if problems:
        raise BadBody("; ".join(problems))
    return rule


async def _add_fault(request: web.Request) -> web.Response:
    try:
        rule = _parse_rule(orjson.loads(await request.read()))
    except (orjson.JSONDecodeError, BadBody) as exc:
        return _json({"error": str(exc)}, 422)
    request.app[EMULATOR_STATE].rules.append(rule)
    return _json({"provider": rule.provider, "mode": rule.mode, "count": rule.remaining})


async def _clear_faults(request: web.Request) -> web.Response:
    request.app[EMULATOR_STATE].rules.clear()
    return _json({"rules": 0})


async def _stats(request: web.Request) -> web.Response:
    state = request.app[EMULATOR_STATE]
    return _json({"requests": state.requests, "documents": state.documents, "tokens": state.tokens,
                  "last_body": state.last_body})


async def _reset(request: web.Request) -> web.Response:
    request.app[EMULATOR_STATE].reset()
    return _json({"reset": True})


# Far above what the gateway sends (server.max_body_bytes defaults to 32 MiB), so a large
# request through the gateway is never refused here by aiohttp's 1 MiB default.
MAX_BODY_BYTES = 64 * 1024 * 1024


def create_emulator_app(config: EmulatorConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[EMULATOR_STATE] = EmulatorState(config or EmulatorConfig())
    app.router.add_routes([web.post(p.path, functools.partial(_serve, p))
                           for p in PROVIDER_ROUTES])
    app.router.add_routes([
        web.post("/_emulator/faults", _add_fault),
        web.delete("/_emulator/faults", _clear_faults),
        web.get("/_emulator/stats", _stats),
        web.post("/_emulator/reset", _reset),
    ])
    return app
