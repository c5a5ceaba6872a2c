"""Running the app on a socket, with the gateway's error body even where aiohttp answers alone.

aiohttp answers a request its HTTP parser refuses (a NUL byte in a header, a bad request line,
an oversized header) before any middleware runs: a `text/plain` 400 without `X-Request-ID`, and
an ERROR line with a traceback in the log. aiohttp has no public hook for that answer (aiohttp
issues #3287, #9882), so this module gives the server a request handler whose `handle_error`
answers `{"error": {"type", "message", "request_id"}}` and logs one line. It is used by
`rerank-gateway serve` through `run_gateway`, and by tests through `GatewayRunner`.

Descriptors are what a crowd of idle clients exhausts first, so connections are bounded in time:
idle keep-alive ones close after `server.keepalive_timeout_seconds`, and one that has not sent a
whole request head `server.header_timeout_seconds` after connecting closes then. They are bounded
in number too: clients may hold the descriptors the open files limit leaves once upstream
connections, Redis and files have theirs (`client_descriptors_for`); the first three quarters
are served, a client past them has its request answered 503 with Retry-After and its connection
closed, and one past them all is closed unread, so the gateway's own sockets and files always
find a descriptor. The soft open files limit is raised to the hard one at start; when accept still fails
for lack of descriptors, asyncio's traceback per attempt becomes one warning per interval and a
metric.

    GatewayRunner(app)         an AppRunner whose connections use JsonErrorRequestHandler
    run_gateway(app, ...)      web.run_app's loop, signals and shutdown, with that runner, and
                               the garbage collector settled once it listens
    raise_open_files_limit()   the soft RLIMIT_NOFILE up to the hard limit
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_runner import GracefulExit

from gateway.errors import BadRequest, GatewayError, HttpError, Overloaded
from gateway.web.edge import error_response

log = logging.getLogger("gateway")

_MESSAGE_CHARS = 200  # aiohttp's message may quote the offending bytes: enough to see, not a dump


@dataclass
class ClientCount:
    """The server's open client connections, how many it serves, and how many it holds at all."""

    descriptors: int = 0  # clients held at once, served or answered 503; 0: no bound but the limit's
    open: int = 0

    @property
    def served(self) -> int:
        # A quarter kept for 503 answers: each holds its descriptor only while it reads one request.
        return self.descriptors - self.descriptors // 4


class JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's per-connection handler, answering its own errors in the gateway's JSON,
    closing a connection whose first request head does not arrive within `header_timeout`,
    and answering 503 to a client past those the server serves."""

    header_timeout: float = 0.0  # seconds; 0 = only aiohttp's keep-alive timeout applies
    clients: ClientCount  # the server's, set as it makes the handler
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        clients = self.clients
        clients.open += 1
        if clients.descriptors and clients.open > clients.served:
            if clients.open > clients.descriptors:
                transport.close()
                return
            self._request_handler = _answer_busy  # read its request, answer 503, close
        if self.header_timeout > 0:
            self._head_deadline = self._loop.call_later(self.header_timeout, self._head_too_slow)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # aiohttp queues a request once its whole head is parsed; from then on its keep-alive
        # timeout governs the connection.
        if self._head_deadline is not None and self._messages:
            self._head_deadline.cancel()
            self._head_deadline = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.clients.open -= 1
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        super().connection_lost(exc)

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        self.force_close()

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500:
            # Not a client's malformed request but a failure; keep aiohttp's traceback for it.
            self.log_exception("error handling request from %s", request.remote, exc_info=exc)
        else:
            log.info("malformed HTTP request from %s refused with %d: %s", request.remote, status, _reason(status, message))
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error body")
        response = malformed_request_response(status, _reason(status, message))
        response.force_close()  # the parser's state is unknown after a refused message
        return response


def malformed_request_response(status: int, reason: str) -> web.Response:
    """The gateway's error body for a request refused before it reached the app."""
    request_id = uuid.uuid4().hex  # the request's own headers could not be read
    error: GatewayError
    if status >= 500:
        error = GatewayError(reason)
    elif status == 400:
        error = BadRequest(reason)
    else:
        error = HttpError(reason, status)
    response = error_response(error, request_id)
    response.headers["X-Request-ID"] = request_id
    return response


def _reason(status: int, message: str | None) -> str:
    if status >= 500:
        return "internal error; see the gateway log"
    lines = (message or "").strip().splitlines()
    first_line = lines[0] if lines else HTTPStatus(status).phrase
    return f"malformed HTTP request: {first_line[:_MESSAGE_CHARS]}"


async def _answer_busy(request: web.BaseRequest) -> web.StreamResponse:
    request_id = uuid.uuid4().hex
    response = error_response(Overloaded("the gateway has as many clients as it can serve; retry shortly"), request_id)
    response.headers["X-Request-ID"] = request_id
    response.force_close()  # its descriptor goes back at once
    return response


class _JsonErrorServer(web.Server):
    header_timeout: float = 0.0
    clients: ClientCount  # set by GatewayRunner as it makes the server

    def __call__(self) -> web.RequestHandler:
        handler = JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.header_timeout = self.header_timeout
        handler.clients = self.clients
        return handler


class GatewayRunner(web.AppRunner):
    """web.AppRunner, but its connections answer aiohttp's own refusals in the gateway's JSON
    and give up on a request head that does not arrive within `header_timeout` seconds."""

    def __init__(
        self, app: web.Application, *, header_timeout: float = 0.0, client_descriptors: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout
        self._client_descriptors = client_descriptors

    async def _make_server(self) -> web.Server:
        # The app builds its server as usual; only the class of the per-connection handler differs.
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        assert isinstance(server, _JsonErrorServer)
        server.header_timeout = self._header_timeout
        server.clients = ClientCount(self._client_descriptors)
        return server


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    keepalive_timeout: float  # seconds an idle keep-alive connection stays open
    header_timeout: float  # seconds a new connection has to send a whole request head
    client_descriptors: int = 0  # client connections held at once (ClientCount); 0: no bound


# Descriptors kept from clients beside the upstream connections: Redis, logs, the listening
# socket, files opened later (metrics in multi-process mode).
RESERVED_DESCRIPTORS = 64


def client_descriptors_for(upstream_connections: int) -> int:
    """Client connections to hold at once under the open files limit: what the upstream
    connections and the reserve leave, and at least half, so a small limit still serves clients."""
    open_files, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if open_files == resource.RLIM_INFINITY:
        return 0
    return max(open_files // 2, open_files - upstream_connections - RESERVED_DESCRIPTORS)


def raise_open_files_limit() -> tuple[int, int]:
    """(before, after): the soft limit on open files raised to the hard one, where it is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return soft, hard
    return soft, soft


# asyncio's message when accept() fails with EMFILE/ENFILE/ENOBUFS/ENOMEM; it then pauses
# accepting for a second and tries again (selector_events, ACCEPT_RETRY_DELAY).
_ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"
ACCEPT_WARNING_INTERVAL_SECONDS = 10.0


class AcceptErrorReporter:
    """One warning per interval for failed accepts (with how many since the last), not a traceback each."""

    def __init__(self, record: Callable[[], None], interval: float = ACCEPT_WARNING_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._record = record
        self._interval = interval
        self._clock = clock
        self._last_warning = -float("inf")
        self._unreported = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_OUT_OF_RESOURCES:
            loop.default_exception_handler(context)
            return
        self._record()
        self._unreported += 1
        now = self._clock()
        if now - self._last_warning < self._interval:
            return
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.warning("cannot accept connections: %s (%d times since the last warning; open files limit %d); "
                    "service resumes as idle connections close", context.get("exception"), self._unreported, soft)
        self._last_warning, self._unreported = now, 0


def run_gateway(
    app: web.Application,
    *,
    host: str,
    port: int,
    reuse_port: bool,
    shutdown_timeout: float,
    limits: ConnectionLimits,
    on_accept_error: Callable[[], None],
    announce: Callable[[], None],
) -> None:
    """What web.run_app does for one TCP site (signals, graceful shutdown), with GatewayRunner."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.set_exception_handler(AcceptErrorReporter(on_accept_error))
    main = loop.create_task(_serve(app, host, port, reuse_port, shutdown_timeout, limits, announce))
    try:
        loop.run_until_complete(main)
    except (GracefulExit, KeyboardInterrupt):
        pass  # SIGTERM / SIGINT: the runner's cleanup below drains requests in flight
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        _cancel_remaining(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve(
    app: web.Application, host: str, port: int, reuse_port: bool, shutdown_timeout: float, limits: ConnectionLimits,
    announce: Callable[[], None],
) -> None:
    runner = GatewayRunner(app, handle_signals=True, access_log=None, shutdown_timeout=shutdown_timeout,
                           keepalive_timeout=limits.keepalive_timeout, header_timeout=limits.header_timeout,
                           client_descriptors=limits.client_descriptors)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
        settle_garbage_collector()
        announce()
        await asyncio.Event().wait()  # until a signal raises GracefulExit
    finally:
        await runner.cleanup()


# Young objects collected at a time (CPython's default is 700). Each request leaves a few hundred
# container objects; at 700 the collector ran every few requests, and the requests in flight it
# found alive were promoted and rescanned by the older generations (docs/bench-history.md).
GC_YOUNG_THRESHOLD = 7000


def settle_garbage_collector() -> None:
    """Once started: what start-up built (modules, config, app) is never scanned again, and the
    collector runs a tenth as often. Together about a fifth of a miss's CPU (docs/bench-history.md)."""
    gc.collect()
    gc.freeze()  # into the permanent generation: a full collection no longer walks ~70,000 objects
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    remaining: set[asyncio.Task[Any]] = asyncio.all_tasks(loop)
    for task in remaining:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*remaining, return_exceptions=True))
