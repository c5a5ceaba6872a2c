"""One configured provider: HTTP calls around its adapter, batching, and answer validation.

Each provider gets its own keep-alive connections (HttpTransport) with a connection limit, so
one slow provider cannot take the connections another needs, and its own proxy route and TLS.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver

from gateway.config import ConfigError, GatewayConfig, ProviderConfig
from gateway.errors import ProviderFailure, is_transient_status
from gateway.models import AnsweredCall, Usage, merge_answered
from gateway.observability.tracing import with_trace_context
from gateway.providers import PROVIDER_KINDS
from gateway.providers.base import Batch, InvalidAnswer, ProviderAdapter, WireScores
from gateway.providers.http_errors import TransportError, UnreadableAnswer
from gateway.providers.proxies import ProxyRoute, proxy_route
from gateway.providers.tls import tls_context
from gateway.providers.transport import HttpTransport, TransportSettings
from gateway.secrets import Secrets

# Statuses after which the same request may succeed elsewhere. 400 and 422 are left out: they
# say the request itself is wrong, and every provider would say so again.
_NO_FALLBACK_STATUSES = frozenset({400, 422})
_ERROR_TEXT_LIMIT = 300

TokenCount = Callable[[int], int]  # characters -> the tokens a provider would bill for them
# The network as the client sees it: POST (url, body, headers, timeout), get (status, body,
# Retry-After) back, or a TransportError saying what went wrong (TimeoutError: the call's own
# total limit). The default is
# the client's own HttpTransport; a test passes a fake provider here instead of a socket.
Post = Callable[[str, bytes, Mapping[str, str], aiohttp.ClientTimeout], Awaitable[tuple[int, bytes, str | None]]]


def build_clients(config: GatewayConfig, secrets: Secrets) -> dict[str, ProviderClient]:
    """One client per provider entry, with its key; a kind the registry lacks is a config error, said here."""
    clients = {}
    for name, provider in config.providers.items():
        if provider.kind not in PROVIDER_KINDS:
            raise ConfigError(f"providers.{name}.kind: no adapter is registered for kind {provider.kind!r}")
        clients[name] = ProviderClient(
            name, provider, secrets.provider_keys[name], missing_key=secrets.missing_keys.get(name, "not set")
        )
    return clients


class ProviderClient:
    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        api_key: str | None,
        post: Post | None = None,
        missing_key: str = "not set",
        environ: Mapping[str, str] | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        """`api_key` as Secrets resolved it; `missing_key` says why it is None ("not set", "empty").

        `post` replaces the HTTP transport (no connection is opened then): the network, injected.
        `environ` is where the proxy variables are read (the process's by default); `resolver`
        names the addresses of hosts instead of DNS (a test's).
        """
        self.name = name
        self.config = config
        self.adapter: ProviderAdapter = PROVIDER_KINDS[config.kind]
        self._api_key = api_key
        self._missing_key = missing_key
        self._url = config.base_url + (config.path or self.adapter.default_path(config))
        # Who the provider sees calling: a refusal of these credentials ends when they change.
        self.identity = hashlib.sha256(f"{self._url}\0{api_key or ''}".encode()).hexdigest()[:16]
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._timeout = aiohttp.ClientTimeout(
            total=config.timeout_seconds, sock_connect=config.connect_timeout_seconds,
            sock_read=config.read_timeout_seconds,
        )
        self.proxy: ProxyRoute | None = proxy_route(self._url, config.proxy, os.environ if environ is None else environ)
        self._resolver = resolver
        self._transport: HttpTransport | None = None
        self._post_over_network = post is None
        self._send: Post = post or _not_started

    @property
    def url(self) -> str:
        return self._url

    async def start(self) -> None:
        if self._transport is None and self._post_over_network:
            config = self.config
            self._transport = HttpTransport(TransportSettings(
                config.max_connections, config.connect_timeout_seconds, config.keepalive_timeout_seconds,
                config.max_answer_bytes, self.proxy, tls_context(self.name, config), self._resolver,
            ))
            self._send = self._transport.post

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()

    def unusable_reason(self, instruction: str | None) -> str | None:
        """Why this provider cannot take the request at all, or None when it can."""
        if not self.config.enabled:
            return "disabled in config"
        if self.config.api_key_env is not None and self._api_key is None:
            return f"no API key (${self.config.api_key_env} is {self._missing_key})"
        if instruction is not None and not self.adapter.takes_instruction:
            return f"kind {self.config.kind!r} cannot take an instruction"
        return None

    async def score(
        self, pairs: Batch, answered: list[AnsweredCall] | None = None, estimate_tokens: TokenCount | None = None
    ) -> tuple[list[float], Usage]:
        """Scores for the pairs in input order, splitting into as many calls as the kind needs.

        Each call that answers goes into `answered` as it does, so a caller whose other calls
        failed, or that was cut off, still has (and pays for) what came back. A failed call lets
        its siblings finish, since they are paid for either way; the first failure is then raised.
        `estimate_tokens` counts the tokens of an answer that reports none (characters -> tokens).
        """
        answered = [] if answered is None else answered
        await self.score_into(pairs, answered, estimate_tokens)
        return merge_answered(answered, pairs)

    async def score_into(
        self, pairs: Batch, answered: list[AnsweredCall], estimate_tokens: TokenCount | None = None
    ) -> None:
        """`score`, its calls' answers left in `answered` only: for a caller that puts them together
        itself (the guarded call, which also keeps what a cut-off try answered)."""
        count = estimate_tokens or _default_token_count
        plan = self._plan_batches(pairs)
        if len(plan) == 1:
            await self._answer(plan[0], answered, count)
        else:
            await _gather_all([self._answer(call, answered, count) for call in plan])

    async def _answer(self, batch: Batch, answered: list[AnsweredCall], count: TokenCount) -> None:
        try:
            result = await self._call(batch)
        except _AnsweredUnreadably as failure:
            # The provider did the work and bills it: so does the ledger, at the gateway's estimate,
            # as a call that answered no pair (the pairs stay unanswered for whoever tries next).
            answered.append(AnsweredCall((), [], self._price(WireScores([]), batch, count)))
            raise ProviderFailure(failure.provider, failure.reason, kind=failure.kind) from None
        answered.append(AnsweredCall(batch.numbers, result.scores, self._price(result, batch, count)))

    def http_calls(self, pairs: Batch) -> int:
        """How many HTTP calls `score(pairs)` makes: one per batch _plan_batches would build."""
        size = self.config.max_batch
        if pairs.listwise:
            return 1
        if self.adapter.multi_query:
            return max(1, -(-len(pairs.documents) // size))
        return sum(-(-len(group) // size) for group in pairs.positions_by_query().values()) or 1

    def _plan_batches(self, pairs: Batch) -> list[Batch]:
        """Calls to make, each a batch of the kind's size and queries; their pairs keep their slots."""
        if pairs.listwise:
            return [pairs]  # a list-wise model scores each document against the others: never split
        size = self.config.max_batch
        if self.adapter.multi_query:
            if len(pairs.documents) <= size:
                return [pairs]  # one call as it stands: nothing to copy
            groups = [list(range(len(pairs.documents)))]
        else:
            groups = list(pairs.positions_by_query().values())
            if len(groups) == 1 and len(pairs.documents) <= size:
                return [pairs]
        return [pairs.select(group[start : start + size]) for group in groups for start in range(0, len(group), size)]

    def _price(self, result: WireScores, batch: Batch, count: TokenCount) -> Usage:
        """The call's cost: the provider's own figures where it gave them, the gateway's estimate where not."""
        tokens, estimated_tokens = result.tokens, 0
        if tokens is None:
            tokens = estimated_tokens = count(self.adapter.billed_chars(batch))
        if result.cost_usd is not None:
            return Usage(tokens=tokens, cost_usd=result.cost_usd, estimated_tokens=estimated_tokens)
        cost = tokens * self.config.price_per_million_tokens / 1e6
        return Usage(tokens, cost, estimated_tokens, cost if estimated_tokens else 0.0)

    async def _call(self, batch: Batch) -> WireScores:
        body = orjson.dumps(self.adapter.to_wire(batch, self.config))
        status, raw, retry_after = await self._post(body)
        if status != 200:
            raise self._http_failure(status, raw, retry_after)
        try:
            result = self.adapter.from_wire(orjson.loads(raw), len(batch.documents))
            return WireScores(self._normalized(result.scores), result.tokens, result.cost_usd)
        except orjson.JSONDecodeError:
            raise _AnsweredUnreadably(self.name, "invalid answer: not JSON", kind="invalid_answer") from None
        except InvalidAnswer as exc:
            raise _AnsweredUnreadably(self.name, f"invalid answer: {exc}", kind="invalid_answer") from None

    async def _post(self, body: bytes) -> tuple[int, bytes, str | None]:
        try:
            return await self._send(self._url, body, with_trace_context(self._headers), self._timeout)
        except UnreadableAnswer as exc:
            raise _AnsweredUnreadably(self.name, f"{exc.kind}: {exc}", kind=exc.kind) from None
        except TransportError as exc:
            raise ProviderFailure(self.name, f"{exc.kind}: {exc}", kind=exc.kind, transient=exc.transient) from None
        except TimeoutError:
            raise ProviderFailure(
                self.name, f"timed out after {self.config.timeout_seconds:g}s (timeout_seconds)", kind="timeout"
            ) from None

    def _http_failure(self, status: int, raw: bytes, retry_after: str | None) -> ProviderFailure:
        if status == 429:
            kind = "http_429"
        elif status >= 500:
            kind = "http_5xx"
        elif status < 400:
            kind = "redirect"  # not the request's fault, as a 4xx would be
        else:
            kind = "http_4xx"
        return ProviderFailure(
            self.name,
            f"HTTP {status}: {self._error_text(raw)}",
            fallback_allowed=status not in _NO_FALLBACK_STATUSES,
            kind=kind,
            transient=is_transient_status(status),
            retry_after=retry_after,
            status=status,
        )

    def _normalized(self, scores: list[float]) -> list[float]:
        """Relevance in [0, 1], higher is better; anything else makes the whole answer invalid."""
        if self.config.score_transform == "sigmoid":
            scores = [_sigmoid(score) for score in scores]
        for score in scores:
            if not 0.0 <= score <= 1.0:
                raise InvalidAnswer(f"score {score!r} is outside [0, 1] (is score_transform set right?)")
        return scores

    def _error_text(self, raw: bytes) -> str:
        """The provider's own error message, short, and never holding our key."""
        try:
            payload: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            text = raw.decode("utf-8", "replace").strip()
        else:
            text = _error_message(payload)
        text = text[:_ERROR_TEXT_LIMIT] or "(empty body)"
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text


class _AnsweredUnreadably(ProviderFailure):
    """A 200 that arrived whole but gave no scores: it is billed (ProviderClient._answer), never retried."""


def _error_message(payload: Any) -> str:
    # DeepInfra: {"detail": {"error": ..}} or {"detail": ..}; OpenAI-likes: {"error": {"message": ..}};
    # Cohere: {"message": ..}; TEI: {"error": .., "error_type": ..}.
    for path in (("detail", "error"), ("error", "message"), ("detail",), ("error",), ("message",)):
        value: Any = payload
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str):
            return value
    return orjson.dumps(payload).decode()


def _sigmoid(logit: float) -> float:
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    exp = math.exp(logit)
    return exp / (1.0 + exp)


async def _not_started(
    url: str, body: bytes, headers: Mapping[str, str], timeout: aiohttp.ClientTimeout
) -> tuple[int, bytes, str | None]:
    raise AssertionError("ProviderClient.start() was not called")


def _default_token_count(chars: int) -> int:
    # The ledger's starting ratio of 4 characters a token (gateway.budget.estimator, a layer
    # beside this one): for callers that have learned no better one.
    return math.ceil(chars / 4)


async def _gather_all(calls: list[Coroutine[Any, Any, None]]) -> None:
    """Every call to its end, then the first failure; a cancellation still cancels them all."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, ProviderFailure):
            raise outcome
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
