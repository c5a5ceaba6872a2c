"""Running the app on a socket, with the gateway's error body even where aiohttp answers alone.

aiohttp answers a request its HTTP parser refuses (a NUL byte in a header, a bad request line,
an oversized header) before any middleware runs: a `text/plain` 400 without `X-Request-ID`, and
an ERROR line with a traceback in the log. aiohttp has no public hook for that answer (aiohttp
issues #3287, #9882), so this module gives the server a request handler whose `handle_error`
answers `{"error": {"type", "message", "request_id"}}` and logs one line. It is used by
`rerank-gateway serve` through `run_gateway`, and by tests through `GatewayRunner`.

    GatewayRunner(app)         an AppRunner whose connections use JsonErrorRequestHandler
    run_gateway(app, ...)      web.run_app's loop, signals and shutdown, with that runner, and
                               the garbage collector settled once it listens
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import uuid
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_runner import GracefulExit

from gateway.errors import BadRequest, GatewayError, HttpError
from gateway.web.edge import error_response

log = logging.getLogger("gateway")

_MESSAGE_CHARS = 200  # aiohttp's message may quote the offending bytes: enough to see, not a dump


class JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's per-connection handler, answering its own errors in the gateway's JSON."""

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


class _JsonErrorServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """web.AppRunner, but its connections answer aiohttp's own refusals in the gateway's JSON."""

    async def _make_server(self) -> web.Server:
        # The app builds its server as usual; only the class of the per-connection handler differs.
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        return server


def run_gateway(
    app: web.Application,
    *,
    host: str,
    port: int,
    reuse_port: bool,
    shutdown_timeout: float,
    announce: Callable[[], None],
) -> None:
    """What web.run_app does for one TCP site (signals, graceful shutdown), with GatewayRunner."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(app, host, port, reuse_port, shutdown_timeout, announce))
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
    app: web.Application, host: str, port: int, reuse_port: bool, shutdown_timeout: float, announce: Callable[[], None]
) -> None:
    runner = GatewayRunner(app, handle_signals=True, access_log=None, shutdown_timeout=shutdown_timeout)
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
# found alive were promoted and rescanned by the older generations (bench/README.md).
GC_YOUNG_THRESHOLD = 7000


def settle_garbage_collector() -> None:
    """Once started: what start-up built (modules, config, app) is never scanned again, and the
    collector runs a tenth as often. Together about a fifth of a miss's CPU (bench/README.md)."""
    gc.collect()
    gc.freeze()  # into the permanent generation: a full collection no longer walks ~70,000 objects
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    remaining: set[asyncio.Task[Any]] = asyncio.all_tasks(loop)
    for task in remaining:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*remaining, return_exceptions=True))
