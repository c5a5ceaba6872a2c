"""A TCP server that accepts connections and never answers: a hung Redis (or provider) for timeout tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def hung_server() -> AsyncIterator[int]:
    """Its port; every connection stays open and silent until the block ends, then all are closed.

    The connections are closed here rather than by a handler sleeping past the test: a handler
    still pending when the loop closes leaves its socket to the garbage collector (ResourceWarning).
    """
    writers: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # the transport keeps the connection open after this returns

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for writer in writers), return_exceptions=True)
        await server.wait_closed()
