"""The provider calls' HTTP client: aiohttp's ClientSession, one per provider, bounded and explained.

aiohttp owns what an HTTP client quietly owes its users: Happy Eyeballs over every resolved
address, a DNS cache, proxies (CONNECT for https, absolute URI for http), a lenient C parser
with header line and count limits, keep-alive with an idle timeout. This module adds what a
gateway needs on top: a cap on the answer's bytes (on the wire and decoded, decompression
streamed under it), one replay of a call whose reused connection died before answering,
307/308 followed within the provider's origin only, and the library's errors mapped to ours.

Its errors are gateway.providers.http_errors', each naming what happened (DNS, refused, TLS, a
timeout and which limit, too large, malformed, a redirect).
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import Awaitable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from yarl import URL

from gateway.providers.decoding import AnswerDecoder, AnswerTooLargeDecoded, UndecodableAnswer, decoder_for
from gateway.providers.http_errors import (
    AnswerTooLarge,
    Malformed,
    Redirected,
    TransportError,
    UnreadableAnswer,
    mapped,
)
from gateway.providers.proxies import ProxyRoute

Answer = tuple[int, bytes, str | None]  # status, body, Retry-After
# Below the keep-alive of the servers in front of most rerankers (uvicorn 5 s, nginx 75 s): the
# gateway drops an idle connection before the server does, so few calls meet a closing one.
IDLE_SECONDS = 2.0
MAX_ANSWER_BYTES = 4 * 1024 * 1024  # a rerank answer is kilobytes; thousands of scores stay far below
# aiohttp's own limits, said here so they are the gateway's decision and show in one place.
MAX_HEADER_LINE_BYTES = 8190
MAX_HEADERS = 128
_READ_PIECE = 64 * 1024
_REDIRECTS_FOLLOWED = frozenset({307, 308})  # the only ones that keep the method and body


@dataclass(frozen=True, slots=True)
class TransportSettings:
    max_connections: int
    connect_timeout: float | None  # for calls that pass no timeout of their own
    idle_seconds: float = IDLE_SECONDS
    max_answer_bytes: int = MAX_ANSWER_BYTES
    proxy: ProxyRoute | None = None  # None: straight to the provider
    ssl_context: ssl.SSLContext | None = None  # None: the system's trust store (SSL_CERT_FILE honoured)
    resolver: AbstractResolver | None = None  # None: aiohttp's; a test's stub names its own addresses


class HttpTransport:
    """POSTs as ProviderClient's `Post` wants them, over one provider's keep-alive connections."""

    def __init__(self, settings: TransportSettings) -> None:
        self._settings = settings
        self._session = _session(settings, force_close=False)
        # A replay goes over a connection of its own: the pool may hold more that died the same way.
        self._fresh = _session(settings, force_close=True)

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: aiohttp.ClientTimeout | None = None
    ) -> Answer:
        """One POST and its whole answer; raises a TransportError saying what went wrong."""
        if self.closed:
            raise TransportError("the provider's connections are closed (the client was closed)")
        target = URL(url)
        try:
            status, raw, retry_after, location = await self._exchange(target, body, headers, timeout)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._session.closed and task is not None and not task.cancelling():
                # aiohttp cancels the calls waiting for a connection when it closes: a failure, not ours.
                raise TransportError("the provider's connections were closed during the call") from None
            raise
        if status in _REDIRECTS_FOLLOWED and location is not None:
            moved = target.join(URL(location))
            if moved.origin() != target.origin():
                raise Redirected(f"HTTP {status} to {location}: not followed outside the provider's origin")
            status, raw, retry_after, location = await self._exchange(moved, body, headers, timeout)
        if 300 <= status < 400:
            raise Redirected(f"HTTP {status} to {location or '(no Location)'}: not followed")
        return status, raw, retry_after

    @property
    def closed(self) -> bool:
        return self._session.closed

    async def close(self) -> None:
        await self._session.close()
        await self._fresh.close()

    async def _exchange(
        self, url: URL, body: bytes, headers: Mapping[str, str], timeout: aiohttp.ClientTimeout | None
    ) -> tuple[int, bytes, str | None, str | None]:
        _REUSED.set(False)
        try:
            return await self._send(self._session, url, body, headers, timeout)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            # Closed by the server while the request went out: an idle-timeout race, not an answer.
            # A rerank call is a pure function, so one replay is safe; it is not one of the retries.
            if not _REUSED.get() or isinstance(exc, aiohttp.ClientConnectorError):
                raise mapped(exc, url) from None
        try:
            return await self._send(self._fresh, url, body, headers, timeout)
        except aiohttp.ClientError as exc:
            raise mapped(exc, url) from None

    async def _send(
        self, session: aiohttp.ClientSession, url: URL, body: bytes, headers: Mapping[str, str],
        timeout: aiohttp.ClientTimeout | None,
    ) -> tuple[int, bytes, str | None, str | None]:
        route = self._settings.proxy
        if route is not None and route.headers and url.scheme == "http":
            headers = {**headers, **route.headers}  # absolute-URI form: the proxy reads it off the request
        try:
            response = await session.post(
                url, data=body, headers=headers, timeout=timeout or session.timeout,
                allow_redirects=False,
                proxy=route.url if route else None, proxy_headers=route.headers if route else None,
            )
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            raise
        except aiohttp.ClientError as exc:
            raise mapped(exc, url) from None
        try:
            if response.status == 101:
                raise Malformed("HTTP 101: the provider switched protocols on a rerank call")
            cap = self._settings.max_answer_bytes
            raw = await _read_capped(response, decoder_for(response.headers, cap), cap)
            if isinstance(raw, UndecodableAnswer):
                raise (UnreadableAnswer if response.status == 200 else Malformed)(str(raw))
        except BaseException as exc:
            response.close()  # the rest of the answer belongs to nobody: the connection goes
            if isinstance(exc, aiohttp.ClientError):
                raise mapped(exc, url) from None
            if isinstance(exc, UndecodableAnswer):
                raise Malformed(str(exc)) from None  # an encoding it does not know: the body was not read
            raise
        response.release()
        return response.status, raw, response.headers.get("Retry-After"), response.headers.get("Location")


# Whether the call running in this task got a connection from the pool (ReuseNoting sets it):
# a task's context is its own, so concurrent calls never see each other's.
_REUSED: ContextVar[bool] = ContextVar("gateway_provider_connection_reused", default=False)


class ReuseNoting(aiohttp.TCPConnector):
    """aiohttp's connector, noting whether a call's connection was opened before (pooled).

    Over a TraceConfig's reuse signal: a TraceConfig sends a dozen signals per call, which cost a
    request 3.5% of its instructions (bench instructions: 2,164,645 against 2,092,927); a
    protocol seen before is the same fact for a set lookup.
    """

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._opened: weakref.WeakSet[object] = weakref.WeakSet()

    async def connect(self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout) -> Connection:
        connection = await super().connect(req, traces, timeout)
        protocol = connection.protocol
        reused = protocol in self._opened
        if not reused and protocol is not None:
            self._opened.add(protocol)
        _REUSED.set(reused)
        return connection


def _session(settings: TransportSettings, force_close: bool) -> aiohttp.ClientSession:
    connector = ReuseNoting(
        limit=settings.max_connections,
        keepalive_timeout=None if force_close else settings.idle_seconds,
        force_close=force_close,
        ssl=settings.ssl_context if settings.ssl_context is not None else True,
        resolver=settings.resolver,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # decoded here, under the cap
        trust_env=False,  # the proxy is chosen once per provider (gateway.providers.proxies)
        max_line_size=MAX_HEADER_LINE_BYTES,
        max_field_size=MAX_HEADER_LINE_BYTES,
        max_headers=MAX_HEADERS,
        headers={"User-Agent": "rerank-gateway", "Accept-Encoding": "identity"},
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout),
    )


async def _read_capped(response: aiohttp.ClientResponse, decoder: AnswerDecoder, cap: int) -> bytes | UndecodableAnswer:
    """The body, decoded, refused as soon as it passes `cap` bytes on the wire or decoded; or, for
    one that does not decode, why: read to its end all the same, so it is known to be whole."""
    if response.content_length is not None and response.content_length > cap:
        raise AnswerTooLarge(f"answer too large: Content-Length {response.content_length} is over {cap} bytes")
    wire = 0
    parts: list[bytes] = []
    broken: UndecodableAnswer | None = None
    async for piece in response.content.iter_chunked(_READ_PIECE):
        wire += len(piece)
        if wire > cap:
            raise AnswerTooLarge(f"answer too large: over {cap} bytes on the wire")
        if broken is None:
            broken = await _decoded_into(parts, decoder.feed(piece))
    if broken is None:
        broken = await _decoded_into(parts, decoder.flush())
    return broken or b"".join(parts)


async def _decoded_into(parts: list[bytes], decoding: Awaitable[bytes]) -> UndecodableAnswer | None:
    try:
        parts.append(await decoding)
    except AnswerTooLargeDecoded as exc:
        raise AnswerTooLarge(str(exc)) from None
    except UndecodableAnswer as exc:
        return exc
    return None
