"""RawServer: an asyncio server scripted per test, answering in bytes written by hand.

It counts the connections it accepts and keeps each request, so a chunked answer, a
`Connection: close`, a bare LF, an endless header or a connection cut mid-answer is exactly
what the test says. A reply may go on with `then`, chunks written as the client reads them
(flow-controlled, so an endless answer costs the server no memory either).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from tests.support.listener import listening

DEEPINFRA_PATH = "/v1/inference/Qwen/Qwen3-Reranker-8B"


@dataclass
class Request:
    head: list[str]  # the request line, then each header line as sent
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass
class Reply:
    data: bytes
    close: bool = False  # the server closes the connection once `data` (and `then`) is written
    then: AsyncIterator[bytes] | None = None


Script = Callable[[Request], Awaitable[Reply]]


def answer(status: int = 200, body: bytes = b'{"ok": true}', *headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def ok(request: Request) -> Reply:
    return Reply(answer(body=request.body))  # the body echoed back, so each call's answer is its own


@dataclass
class RawServer:
    script: Script
    idle_close: float | None = None  # close a connection that sends no request for this long, as servers do
    port: int = 0
    accepted: int = 0
    finished: int = 0  # connections whose handler is done: closed by either end
    requests: list[Request] = field(default_factory=list)
    _readers: list[asyncio.StreamReader] = field(default_factory=list)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._readers.append(reader)
        self._writers.append(writer)
        try:
            while (request := await self._next_request(reader)) is not None:
                self.requests.append(request)
                reply = await self.script(request)
                writer.write(reply.data)
                await writer.drain()
                if reply.then is not None:
                    async for chunk in reply.then:
                        writer.write(chunk)
                        await writer.drain()
                if reply.close:
                    return
        except (ConnectionError, asyncio.CancelledError):
            # Cancelled: the test is over. Not re-raised: asyncio 3.11 logs a cancelled handler as an error.
            return
        finally:
            self.finished += 1
            writer.close()

    async def _next_request(self, reader: asyncio.StreamReader) -> Request | None:
        try:
            return await asyncio.wait_for(read_request(reader), self.idle_close)
        except TimeoutError:
            return None

    @property
    def closed_by_client(self) -> int:
        """Connections whose client end has closed (EOF read, or seen with a script still holding the answer)."""
        return sum(reader.at_eof() for reader in self._readers)

    def url(self, path: str = DEEPINFRA_PATH, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[:-2]
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:])}
    return Request(head, headers, await reader.readexactly(int(headers.get("content-length", "0"))))


@asynccontextmanager
async def raw_server(
    script: Script = ok, tls: ssl.SSLContext | None = None, idle_close: float | None = None
) -> AsyncIterator[RawServer]:
    server = RawServer(script, idle_close)
    async with listening(server.handle, tls) as port:
        server.port = port
        try:
            yield server
        finally:
            for writer in server._writers:
                writer.close()
            await asyncio.gather(*(w.wait_closed() for w in server._writers), return_exceptions=True)


@asynccontextmanager
async def full_backlog() -> AsyncIterator[int]:
    """The port of a listener that never accepts and whose backlog is full: a connect there hangs.

    Linux drops a SYN while the accept queue is full, so the connect waits as one to an
    unreachable host does.
    """
    listener = socket.socket()
    fillers = [socket.socket() for _ in range(3)]  # listen(0) queues one; the rest wait in SYN_SENT
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        for filler in fillers:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(listener.getsockname())
        yield listener.getsockname()[1]
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
