"""Clients past those the gateway serves are answered 503 with Retry-After and let go, so its own
connections and files always find a descriptor; past every descriptor for clients, they are closed
unread. A request that still meets EMFILE is a 503 with Retry-After too, never a 500."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.budget import Limit, MemoryLedger, Refusal, Reservation
from gateway.config import parse_config
from gateway.process.server import GatewayRunner
from tests.support.config import gateway_config
from tests.support.gateway import emulator_url
from tests.support.polling import eventually

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def capped_server(client_descriptors: int) -> AsyncIterator[tuple[int, list[Connection]]]:
    """Its port, and a list whose connections are closed (and waited for) at the end."""
    app = web.Application()
    app.router.add_get("/", hello)
    runner = GatewayRunner(app, client_descriptors=client_descriptors)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    opened: list[Connection] = []
    try:
        yield runner.addresses[0][1], opened
    finally:
        for _, writer in opened:
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for _, writer in opened), return_exceptions=True)
        await runner.cleanup()


async def connect(port: int, opened: list[Connection]) -> Connection:
    connection = await asyncio.open_connection("127.0.0.1", port)
    opened.append(connection)
    return connection


async def head_of_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """The answer's head; its body is read too (by Content-Length), so the next answer starts clean."""
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    body = await reader.readexactly(length)
    return head + body


async def test_a_client_past_those_served_gets_503_with_retry_after_and_is_let_go():
    async with capped_server(client_descriptors=4) as (port, opened):  # 3 served, a 4th answered 503
        first, second, third = [await connect(port, opened) for _ in range(3)]
        for connection in (first, second, third):
            assert (await head_of_answer(*connection)).startswith(b"HTTP/1.1 200")
        reader, writer = await connect(port, opened)
        head = await head_of_answer(reader, writer)
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head
        assert b'"type":"overloaded"' in head
        assert await reader.read() == b""  # and then the server closes
        second[1].close()

        async def fresh_client_served() -> bool:
            return (await head_of_answer(*await connect(port, opened))).startswith(b"HTTP/1.1 200")

        await eventually(fresh_client_served, what="a new client served once one left")
        # The first client was never disturbed: still served on its keep-alive connection.
        assert (await head_of_answer(*first)).startswith(b"HTTP/1.1 200")


async def test_clients_past_every_descriptor_for_clients_are_closed_unread():
    async with capped_server(client_descriptors=4) as (port, opened):
        for _ in range(4):
            await connect(port, opened)
        reader, _ = await connect(port, opened)
        assert await reader.read() == b""  # closed without a word: no descriptor spent on an answer


class OutOfDescriptorsLedger(MemoryLedger):
    """A ledger whose every reservation meets EMFILE, as a file opened on the request path once did."""

    async def reserve(
        self, limits: Sequence[Limit], amount_usd: float, hold_seconds: float, tokens: int = 0
    ) -> Reservation | Refusal:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


async def test_running_out_of_descriptors_inside_a_request_is_503_with_retry_after_not_500(
    aiohttp_client: Callable[..., Awaitable[TestClient]], emulator: TestClient,
):
    raw = gateway_config(emulator_url(emulator), providers={"deepinfra": {"budget": {"daily_usd": 10.0}}})
    gateway = await aiohttp_client(create_app(parse_config(raw), ledger=OutOfDescriptorsLedger()))
    response = await gateway.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"]})
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    error = (await response.json())["error"]
    assert error["type"] == "overloaded" and "Too many open files" in error["message"]
