"""Local stand-ins for the rerank providers' public APIs, with fault injection.

One aiohttp app answers DeepInfra, Fireworks, Cohere (v1/v2) and TEI wire formats with
deterministic word-overlap scores, so development, tests, benchmarks and chaos tests run
without a network. `/_emulator/*` is the control API: fault rules, stats, reset.
All state lives on the app (one `EmulatorState` per app), never in this module.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

PROVIDERS = ("deepinfra", "fireworks", "cohere", "tei")
# Faults that answer well-formed, in-range scores that are quietly wrong: only a quality check
# (canary, agreement with another provider) can tell them from honest answers.
QUIET_FAULT_MODES = frozenset({"rescale", "template", "random"})
FAULT_MODES = frozenset({"status", "hang", "slow", "garbage", "wrong_count", "nan", "shuffle",
                         "cut", "out_of_range", "duplicate_index", "drop"}) | QUIET_FAULT_MODES
# Faults that replace the whole answer, decided before the body is even validated,
# the way a broken upstream fails regardless of what was sent.
_TRANSPORT_FAULTS = frozenset({"status", "hang", "garbage", "drop"})

_WORD = re.compile(r"[^\W_]+")  # Unicode letters and digits: queries are often not English
_NAN_MARK = "__emulator_nan__"  # orjson writes NaN as null; this string is swapped for NaN
_HANG_SECONDS = 3600.0
_HANG_POLL_SECONDS = 0.05
_COST_PER_TOKEN = 0.05 / 1e6


@dataclass
class EmulatorConfig:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    api_key: str | None = None
    seed: int = 0


# --- scoring -------------------------------------------------------------------------

def _words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def _logit(query_words: frozenset[str], query: str, document: str,
           instruction: str | None) -> float:
    overlap = len(query_words & _words(document)) / max(1, len(query_words))
    # A hash-derived jitter keeps pairs with equal overlap from tying and lets the
    # instruction move the score a little, like a real instruction-aware reranker.
    key = "\x1f".join((query, document, instruction or "")).encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return 6.0 * overlap - 3.0 + int.from_bytes(digest, "big") / 2.0**64 - 0.5


def emulated_logit(query: str, document: str, instruction: str | None = None) -> float:
    return _logit(_words(query), query, document, instruction)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def emulated_score(query: str, document: str, instruction: str | None = None) -> float:
    return _sigmoid(emulated_logit(query, document, instruction))


# --- quiet misbehaviour: valid answers from the wrong model ------------------------------

def _unit_hash(*parts: str) -> float:
    """A uniform number in (0, 1) fixed by `parts`: a pair-dependent 'noise' that repeats."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def _rescaled(query_words: frozenset[str], query: str, document: str,
              instruction: str | None) -> float:
    # The same model's order behind another output scale (a missing sigmoid temperature,
    # a calibration layer): every ranking survives, every cached score is off.
    return _sigmoid(_logit(query_words, query, document, instruction)) ** 3


def _other_template(query_words: frozenset[str], query: str, document: str,
                    instruction: str | None) -> float:
    # A prompt template the model was not trained on: the instruction is lost, relevance
    # still shows but weakly, and pair-dependent noise of about its size reorders results.
    overlap = len(query_words & _words(document)) / max(1, len(query_words))
    return _sigmoid(2.0 * overlap - 1.0 + 4.0 * (_unit_hash("template", query, document) - 0.5))


def misbehaving_score(mode: str, query: str, document: str, instruction: str | None = None,
                      seed: int = 0) -> float:
    """The probability a quietly misbehaving provider answers for one pair in `mode`
    (one of QUIET_FAULT_MODES); `seed` is the emulator's, which only 'random' uses."""
    if mode == "random":  # fixed per pair and seed, unrelated to relevance
        return _unit_hash("random", str(seed), query, document)
    if mode == "rescale":
        return _rescaled(_words(query), query, document, instruction)
    if mode == "template":
        return _other_template(_words(query), query, document, instruction)
    raise ValueError(f"not a quiet fault mode: {mode!r}; known: {', '.join(sorted(QUIET_FAULT_MODES))}")


def _logit_of(probability: float) -> float:
    return math.log(probability / (1.0 - probability))


# --- decoded requests ------------------------------------------------------------------

class _BadRequest(Exception):
    """The body does not fit the provider's format; answered as 422."""


@dataclass(frozen=True, slots=True)
class _Call:
    queries: list[str]  # one per document: every provider scores (query, document) pairs
    documents: list[str]
    instruction: str | None = None
    top_n: int | None = None
    return_documents: bool = False
    raw_scores: bool = False
    model: str | None = None
    api_version: str = "2"

    def scores(self) -> list[float]:
        words: dict[str, frozenset[str]] = {}  # queries usually repeat: tokenize each once
        logits = [_logit(words.get(q) or words.setdefault(q, _words(q)), q, d, self.instruction)
                  for q, d in zip(self.queries, self.documents)]
        return logits if self.raw_scores else [_sigmoid(x) for x in logits]

    def misbehaving_scores(self, mode: str, seed: int) -> list[float]:
        """What a quietly wrong provider answers: in range and well-formed, raw or not."""
        scores = [misbehaving_score(mode, q, d, self.instruction, seed)
                  for q, d in zip(self.queries, self.documents)]
        return [_logit_of(p) for p in scores] if self.raw_scores else scores

    def tokens(self) -> int:
        extra = len(self.instruction or "")
        chars = sum(len(q) + len(d) + extra for q, d in zip(self.queries, self.documents))
        return max(len(self.documents), chars // 4)


def _field(body: Any, name: str, kind: type, default: Any = ...) -> Any:
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object")
    value = body.get(name)
    if value is None and default is not ...:
        return default
    # bool is an int subclass, but a top_n of `true` is a client bug worth surfacing
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _BadRequest(f"field '{name}' is missing or has the wrong type")
    return value


def _strings(body: Any, name: str) -> list[str]:
    values: list[str] = _field(body, name, list)  # checked just below
    if not all(isinstance(v, str) for v in values):
        raise _BadRequest(f"field '{name}' must be a list of strings")
    return values


def _top_n(body: Any) -> int | None:
    top_n: int | None = _field(body, "top_n", int, None)
    if top_n is not None and top_n < 1:
        raise _BadRequest("field 'top_n' must be at least 1")
    return top_n


def _decode_deepinfra(body: Any) -> _Call:
    queries, documents = _strings(body, "queries"), _strings(body, "documents")
    if len(queries) != len(documents):
        raise _BadRequest("queries and documents must have the same length")
    return _Call(queries, documents, instruction=_field(body, "instruction", str, None))


def _decode_fireworks(body: Any) -> _Call:
    documents = _strings(body, "documents")
    return _Call([_field(body, "query", str)] * len(documents), documents,
                 instruction=_field(body, "task", str, None), top_n=_top_n(body),
                 return_documents=_field(body, "return_documents", bool, False),
                 model=_field(body, "model", str))


def _cohere_text(doc: Any) -> str:
    # v1 clients still send {"text": ...} objects; v2 servers accept them too
    text = doc.get("text") if isinstance(doc, dict) else doc
    if not isinstance(text, str):
        raise _BadRequest("each document must be a string or an object with a 'text' string")
    return text


def _decode_cohere(body: Any, api_version: str) -> _Call:
    documents = [_cohere_text(d) for d in _field(body, "documents", list)]
    model = _field(body, "model", str, None) if api_version == "1" else _field(body, "model", str)
    return _Call([_field(body, "query", str)] * len(documents), documents, top_n=_top_n(body),
                 return_documents=_field(body, "return_documents", bool, False),
                 model=model, api_version=api_version)


def _decode_tei(body: Any) -> _Call:
    texts = _strings(body, "texts")
    _field(body, "truncate", bool, False)  # accepted for compatibility; texts are never cut
    return _Call([_field(body, "query", str)] * len(texts), texts,
                 raw_scores=_field(body, "raw_scores", bool, False),
                 return_documents=_field(body, "return_text", bool, False))


# --- encoding answers, with the body-shaped faults --------------------------------------

def _distort_scores(scores: list[Any], mode: str | None) -> list[Any]:
    """DeepInfra's bare score list, bent the way a misbehaving upstream would."""
    if mode == "cut":
        scores = scores[: len(scores) // 2]
    elif mode in ("wrong_count", "out_of_range", "duplicate_index"):
        scores = scores[:-1]  # without indices, a bad index can only show as a short list
    if mode == "nan" and scores:
        scores[0] = _NAN_MARK
    return scores


def _distort_results(items: list[dict[str, Any]], mode: str | None, n_docs: int,
                     rng: random.Random, score_key: str) -> list[dict[str, Any]]:
    """A correct, sorted result list, bent the way a misbehaving upstream would."""
    if mode == "shuffle":
        rng.shuffle(items)
    elif mode == "cut":
        items = items[: len(items) // 2]
    elif mode == "wrong_count":
        items = items[:-1]
    elif mode == "out_of_range" and items:
        items[-1]["index"] = n_docs
    elif mode == "duplicate_index" and items:
        if len(items) == 1:
            items.append(dict(items[0]))
        items[-1]["index"] = items[0]["index"]
    if mode == "nan" and items:
        items[0][score_key] = _NAN_MARK
    return items


def _results(call: _Call, scores: list[float], fault: str | None, rng: random.Random,
             score_key: str, doc_key: str,
             as_doc: Callable[[str], Any] = str) -> list[dict[str, Any]]:
    """Sorted, top_n-cut results in the index-bearing formats, faults applied."""
    order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)  # stable on ties
    items: list[dict[str, Any]] = [{"index": i, score_key: scores[i]} for i in order[: call.top_n or len(order)]]
    if call.return_documents:
        for item in items:
            item[doc_key] = as_doc(call.documents[item["index"]])
    return _distort_results(items, fault, len(scores), rng, score_key)


def _encode_deepinfra(call: _Call, scores: list[float], fault: str | None,
                      rng: random.Random, runtime_ms: int) -> Any:
    tokens = call.tokens()
    return {"scores": _distort_scores(scores, fault), "input_tokens": tokens, "request_id": None,
            "inference_status": {"status": "succeeded", "runtime_ms": runtime_ms,
                                 "cost": tokens * _COST_PER_TOKEN, "tokens_generated": 0,
                                 "tokens_input": tokens, "output_length": 0}}


def _encode_fireworks(call: _Call, scores: list[float], fault: str | None,
                      rng: random.Random, runtime_ms: int) -> Any:
    tokens = call.tokens()
    return {"object": "list", "model": call.model,
            "data": _results(call, scores, fault, rng, "relevance_score", "document"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encode_cohere(call: _Call, scores: list[float], fault: str | None,
                   rng: random.Random, runtime_ms: int) -> Any:
    results = _results(call, scores, fault, rng, "relevance_score", "document",
                       lambda text: {"text": text})
    # meta carries exactly the golden sample's keys: no "tokens", which rerank answers omit
    return {"id": str(uuid.uuid4()), "results": results,
            "meta": {"api_version": {"version": call.api_version},
                     "billed_units": {"search_units": 1}}}


def _encode_tei(call: _Call, scores: list[float], fault: str | None,
                rng: random.Random, runtime_ms: int) -> Any:
    return _results(call, scores, fault, rng, "score", "text")


Encoder = Callable[[_Call, list[float], str | None, random.Random, int], Any]


@dataclass(frozen=True, slots=True)
class _Provider:
    name: str
    path: str
    decode: Callable[[Any], _Call]
    encode: Encoder
    error_body: Callable[[str], Any]


_PROVIDER_ROUTES = (
    _Provider("deepinfra", "/v1/inference/{model:.+}", _decode_deepinfra, _encode_deepinfra,
              lambda msg: {"detail": {"error": msg}}),
    _Provider("fireworks", "/inference/v1/rerank", _decode_fireworks, _encode_fireworks,
              lambda msg: {"error": msg}),
    _Provider("cohere", "/v1/rerank", lambda body: _decode_cohere(body, "1"), _encode_cohere,
              lambda msg: {"message": msg}),
    _Provider("cohere", "/v2/rerank", lambda body: _decode_cohere(body, "2"), _encode_cohere,
              lambda msg: {"message": msg}),
    _Provider("tei", "/rerank", _decode_tei, _encode_tei, lambda msg: {"error": msg}),
)


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
    last_body: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.reset()

    def reset(self) -> None:
        self.rules.clear()
        self.requests = dict.fromkeys(PROVIDERS, 0)
        self.documents = dict.fromkeys(PROVIDERS, 0)
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
        body = body.replace(b'"' + _NAN_MARK.encode() + b'"', b"NaN", 1)
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


async def _hang(request: web.Request) -> None:
    # aiohttp does not cancel handlers when the client goes away (unless the runner opts in),
    # so watch the transport: otherwise every timed-out client leaves a sleeping task behind.
    deadline = time.monotonic() + _HANG_SECONDS
    while request.transport is not None and not request.transport.is_closing():
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(_HANG_POLL_SECONDS)


async def _transport_fault(request: web.Request, provider: _Provider,
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


async def _serve(provider: _Provider, request: web.Request) -> web.Response:
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
    except _BadRequest as exc:
        return _json(provider.error_body(str(exc)), 422)
    state.documents[provider.name] += len(call.documents)
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
        raise _BadRequest("body must be a JSON object")
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
        raise _BadRequest("; ".join(problems))
    return rule


async def _add_fault(request: web.Request) -> web.Response:
    try:
        rule = _parse_rule(orjson.loads(await request.read()))
    except (orjson.JSONDecodeError, _BadRequest) as exc:
        return _json({"error": str(exc)}, 422)
    request.app[EMULATOR_STATE].rules.append(rule)
    return _json({"provider": rule.provider, "mode": rule.mode, "count": rule.remaining})


async def _clear_faults(request: web.Request) -> web.Response:
    request.app[EMULATOR_STATE].rules.clear()
    return _json({"rules": 0})


async def _stats(request: web.Request) -> web.Response:
    state = request.app[EMULATOR_STATE]
    return _json({"requests": state.requests, "documents": state.documents,
                  "last_body": state.last_body})


async def _reset(request: web.Request) -> web.Response:
    request.app[EMULATOR_STATE].reset()
    return _json({"reset": True})


# Far above what the gateway sends (server.max_body_bytes defaults to 8 MiB), so a large
# request through the gateway is never refused here by aiohttp's 1 MiB default.
MAX_BODY_BYTES = 64 * 1024 * 1024


def create_emulator_app(config: EmulatorConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[EMULATOR_STATE] = EmulatorState(config or EmulatorConfig())
    app.router.add_routes([web.post(p.path, functools.partial(_serve, p))
                           for p in _PROVIDER_ROUTES])
    app.router.add_routes([
        web.post("/_emulator/faults", _add_fault),
        web.delete("/_emulator/faults", _clear_faults),
        web.get("/_emulator/stats", _stats),
        web.post("/_emulator/reset", _reset),
    ])
    return app
