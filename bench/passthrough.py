"""The floor for any Python proxy: forward the body bytes, return the upstream body.

    python -m bench.passthrough --port 9101 --upstream http://127.0.0.1:9100

No parsing, no validation, no headers beyond the two the gateway also sends: whatever CPU
this spends per request, no aiohttp-based proxy can spend less. It mirrors the gateway's
upstream side (one keep-alive ClientSession, at most 64 connections, like a provider's
default `max_connections`) so the comparison isolates the gateway's own work.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
_UPSTREAM: web.AppKey[str] = web.AppKey("upstream", str)
_FORWARDED_HEADERS = ("Content-Type", "Authorization")
_MAX_CONNECTIONS = 64  # the gateway's per-provider default


async def forward(request: web.Request) -> web.Response:
    body = await request.read()
    headers = {name: request.headers[name] for name in _FORWARDED_HEADERS if name in request.headers}
    url = request.app[_UPSTREAM] + request.path_qs
    async with request.app[_SESSION].post(url, data=body, headers=headers) as upstream:
        payload = await upstream.read()
        return web.Response(body=payload, status=upstream.status, content_type=upstream.content_type)


async def _session_lifetime(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=_MAX_CONNECTIONS, keepalive_timeout=30)
    app[_SESSION] = aiohttp.ClientSession(connector=connector)
    try:
        yield
    finally:
        await app[_SESSION].close()


def create_passthrough_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)  # the gateway's default body limit
    app[_UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(_session_lifetime)
    app.router.add_post("/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9100")
    args = parser.parse_args()
    web.run_app(create_passthrough_app(args.upstream), host=args.host, port=args.port,
                access_log=None, print=None)


if __name__ == "__main__":
    main()
