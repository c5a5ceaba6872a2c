"""The provider calls' HTTP/1.1 client: a POST written in one go, its answer parsed by httptools.

aiohttp's ClientSession builds a request object, a timer, a connector slot, a response object
and a stream for every call, about 130 µs of CPU per provider call; a provider call needs
none of that: a known body out, a small JSON answer back, over keep-alive connections.
httptools is llhttp (Node's parser, the one uvicorn uses), so the parsing is in C.

Per origin, a pool holds at most `max_connections` connections, open or opening; a call that
finds none idle and none to open waits its turn (first come, first served). A connection goes
back to the pool only after an answer read to its end that lets it stay open; one that erred,
was cut off or cancelled mid-call is closed, since what it would read next belongs to nobody.
Idle ones close after `idle_seconds`. There is no total timeout: every caller bounds its call
with asyncio.timeout, and a cancelled call closes its connection.

Errors are aiohttp's, so the code that caught them from the session catches them here:

    aiohttp.ClientError
      ClientConnectionError     cannot connect (refused, unknown host, TLS), or the pool is closed
        ServerDisconnectedError the server closed the connection before the answer was complete
        ServerTimeoutError      connecting took longer than `connect_timeout`; also a TimeoutError
      ClientPayloadError        the answer is not HTTP/1.1 that can be read
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import httptools

Answer = tuple[int, bytes, str | None]  # status, body, Retry-After
IDLE_SECONDS = 30.0  # as aiohttp's connector was set (keepalive_timeout=30)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Identity only: an answer is a few hundred bytes of JSON, not worth a decompressor per call.
_FIXED_HEADERS = "User-Agent: rerank-gateway\r\nAccept-Encoding: identity\r\n"


class HttpTransport:
    """POSTs as ProviderClient's `Post` wants them, over a keep-alive pool per origin."""

    def __init__(
        self,
        max_connections: int,
        connect_timeout: float | None,
        idle_seconds: float = IDLE_SECONDS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context` for https origins; None: the system's trust store, made on the first https connect."""
        self._limits = _Limits(max_connections, connect_timeout, idle_seconds)
        self._ssl_context = ssl_context
        self._targets: dict[str, _Target] = {}
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._closed = False

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: aiohttp.ClientTimeout | None = None
    ) -> Answer:
        """One POST; `timeout` is not used: the caller bounds the call, `connect_timeout` the connect."""
        if self._closed:
            raise _closed_error()
        target = self._targets.get(url) or self._add_target(url)
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        if lines.count("\n") + lines.count("\r") != 2 * len(headers):
            raise ValueError("a header name or value holds a line break")  # it would forge headers
        request = b"".join((target.head, lines.encode("latin-1"), b"Content-Length: %d\r\n\r\n" % len(body), body))
        pool = target.pool
        connection = await pool.acquire()
        try:
            answer = await connection.exchange(request)
        except BaseException:
            pool.discard(connection)
            raise
        pool.release(connection)
        return answer

    @property
    def closed(self) -> bool:
        return self._closed

    def open_connections(self) -> int:
        """Connections open or being opened, all origins together."""
        return sum(pool.open for pool in self._pools.values())

    async def close(self) -> None:
        """Close every connection, in use or idle; calls still waiting for one, and later calls, fail."""
        self._closed = True
        pools = list(self._pools.values())
        self._pools.clear()
        self._targets.clear()
        for pool in pools:
            await pool.close()

    def _add_target(self, url: str) -> _Target:
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname
        if scheme not in _DEFAULT_PORTS or not host:
            raise aiohttp.InvalidURL(url)
        port = parts.port or _DEFAULT_PORTS[scheme]
        origin = (scheme, host, port)
        pool = self._pools.get(origin)
        if pool is None:
            tls = (self._ssl_context or ssl.create_default_context()) if scheme == "https" else None
            self._ssl_context = self._ssl_context or tls
            pool = self._pools[origin] = _Pool(host, port, tls, self._limits)
        target = _Target(_request_head(parts.path, parts.query, host, port, scheme), pool)
        self._targets[url] = target
        return target


def _request_head(path: str, query: str, host: str, port: int, scheme: str) -> bytes:
    """The request line, Host and the headers every call sends, ready to be followed by the caller's."""
    target = (path or "/") + (f"?{query}" if query else "")
    authority = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS[scheme]:
        authority += f":{port}"
    return f"POST {target} HTTP/1.1\r\nHost: {authority}\r\n{_FIXED_HEADERS}".encode("latin-1")


@dataclass(frozen=True, slots=True)
class _Limits:
    max_connections: int
    connect_timeout: float | None
    idle_seconds: float


@dataclass(frozen=True, slots=True)
class _Target:
    head: bytes
    pool: _Pool


class _Pool:
    """One origin's connections: idle ones (newest last), and the calls waiting for one, in order."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, limits: _Limits) -> None:
        self._host, self._port, self._tls, self._limits = host, port, tls, limits
        self._loop = asyncio.get_running_loop()
        self.open = 0  # open or being opened: what max_connections bounds
        self._connections: set[_Connection] = set()
        self._idle: deque[_Connection] = deque()
        # A waiter is handed a connection, or None: a slot of its own to open one in.
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    async def acquire(self) -> _Connection:
        while True:
            while self._idle:
                # The newest first: the old ones age out, so an idle pool shrinks.
                connection = self._idle.pop()
                if connection.usable():
                    return connection
                self.discard(connection)  # the server closed it while idle: not worth a failed call
            if self._closed:
                raise _closed_error()
            if self.open < self._limits.max_connections:
                self.open += 1
                return await self._connect()
            handed = await self._wait_turn()
            if handed is None:
                return await self._connect()
            if handed.usable():
                return handed
            self.discard(handed)

    def release(self, connection: _Connection) -> None:
        """Back to the pool after a whole answer: to the first waiter, else idle (unless it cannot stay open)."""
        if not connection.usable() or self._closed:
            self.discard(connection)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        connection.idle_since = self._loop.time()
        self._idle.append(connection)
        if self._sweep is None:
            self._sweep = self._loop.call_at(self._idle[0].idle_since + self._limits.idle_seconds, self._close_aged)

    def discard(self, connection: _Connection) -> None:
        """Close it and free its slot, for the first waiter to open one in."""
        connection.abort()
        if connection in self._connections:
            self._connections.remove(connection)
            self.open -= 1
        self._grant_slots()

    async def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(_closed_error())
        connections = list(self._connections)
        for connection in connections:
            connection.abort()
        await asyncio.gather(*(connection.lost for connection in connections))

    async def _connect(self) -> _Connection:
        """A new connection in a slot already counted in `open`; the slot is freed if it fails."""
        try:
            connection = await self._open_connection()
        except BaseException:
            self.open -= 1
            self._grant_slots()
            raise
        if self._closed:  # closed while it connected: nobody would close it later
            connection.abort()
            self.open -= 1
            raise _closed_error()
        self._connections.add(connection)
        return connection

    async def _open_connection(self) -> _Connection:
        timeout = self._limits.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                _, connection = await self._loop.create_connection(
                    lambda: _Connection(self._loop, self._lost_while_idle), self._host, self._port,
                    ssl=self._tls, server_hostname=self._host if self._tls else None,
                )
        except TimeoutError:
            raise aiohttp.ServerTimeoutError(f"connecting to {self._host}:{self._port} took over {timeout:g}s") from None
        except OSError as exc:
            raise aiohttp.ClientConnectionError(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        return connection

    async def _wait_turn(self) -> _Connection | None:
        waiter: asyncio.Future[_Connection | None] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            # Cancelled after its turn came: what it was handed goes on to the next in line.
            if waiter.done() and not waiter.cancelled():
                handed = waiter.result()
                if handed is None:
                    self.open -= 1
                    self._grant_slots()
                else:
                    self.release(handed)
            raise

    def _grant_slots(self) -> None:
        while self._waiters and self.open < self._limits.max_connections:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.open += 1
                waiter.set_result(None)

    def _lost_while_idle(self, connection: _Connection) -> None:
        # Closed by the server while idle: its slot and descriptor are free now, not at the next acquire.
        if connection in self._idle:
            self._idle.remove(connection)
            self.discard(connection)

    def _close_aged(self) -> None:
        self._sweep = None
        aged = self._loop.time() - self._limits.idle_seconds
        while self._idle and self._idle[0].idle_since <= aged:
            self.discard(self._idle.popleft())
        if self._idle:
            self._sweep = self._loop.call_at(self._idle[0].idle_since + self._limits.idle_seconds, self._close_aged)


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one call at a time; its parser's callbacks fill in the answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_lost: Callable[[_Connection], None]) -> None:
        self._loop = loop
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._open = False  # connected, and neither end has closed or erred since
        self.lost: asyncio.Future[None] = loop.create_future()
        self.idle_since = 0.0
        self._answer: asyncio.Future[Answer] | None = None
        self._reset()

    def _reset(self) -> None:
        self._chunks: list[bytes] = []
        self._retry_after: str | None = None
        self._encoding: bytes | None = None
        self._framed = False  # Content-Length or chunked; else the body ends when the server closes
        self._headers_done = False

    def usable(self) -> bool:
        return self._open and self._transport is not None and not self._transport.is_closing()

    async def exchange(self, request: bytes) -> Answer:
        assert self._transport is not None and self._answer is None, "one call at a time, on an open connection"
        self._reset()
        answer: asyncio.Future[Answer] = self._loop.create_future()
        self._answer = answer
        self._transport.write(request)
        try:
            return await answer
        finally:
            self._answer = None

    def abort(self) -> None:
        self._open = False
        if self._transport is not None:
            self._transport.abort()

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._open = True

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            self.abort()  # bytes nobody asked for: the connection is out of step
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(aiohttp.ClientPayloadError(f"unreadable HTTP answer: {exc}"))

    def eof_received(self) -> bool:
        self._open = False
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        if self._headers_done and not self._framed:
            self.on_message_complete()  # an answer without a length ends where the connection does
        reason = f": {exc}" if exc is not None else ""
        self._fail(aiohttp.ServerDisconnectedError(f"the server closed the connection before the answer{reason}"))
        if not self.lost.done():
            self.lost.set_result(None)
        self._on_lost(self)

    def _fail(self, error: aiohttp.ClientError) -> None:
        self.abort()
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)

    # --- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"retry-after":
            self._retry_after = value.decode("latin-1")
        elif name in (b"content-length", b"transfer-encoding"):
            self._framed = True
        elif name == b"content-encoding" and value.lower() != b"identity":
            self._encoding = value.lower()

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self._reset()
            return
        if not self._parser.should_keep_alive():
            self._open = False  # Connection: close, or HTTP/1.0
        answer = self._answer
        if answer is None or answer.done():
            return
        body = b"".join(self._chunks)
        if self._encoding is not None:
            try:
                body = _decoded(body, self._encoding)
            except (zlib.error, ValueError) as exc:
                self._fail(aiohttp.ClientPayloadError(f"cannot decode a {self._encoding!r} answer: {exc}"))
                return
        self._headers_done = False
        answer.set_result((status, body, self._retry_after))


def _closed_error() -> aiohttp.ClientConnectionError:
    return aiohttp.ClientConnectionError("the provider's connections are closed (the client was closed)")


def _decoded(body: bytes, encoding: bytes) -> bytes:
    """The body of a server that compressed although asked not to."""
    if encoding in (b"gzip", b"x-gzip"):
        return zlib.decompress(body, wbits=16 + zlib.MAX_WBITS)
    if encoding == b"deflate":
        return zlib.decompress(body)
    raise ValueError("not gzip or deflate")
