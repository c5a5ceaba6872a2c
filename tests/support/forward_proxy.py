"""A forward proxy of the test's own: CONNECT tunnels (https) and absolute-URI requests (http).

It notes the first request line of every connection and its Proxy-Authorization, then pipes
bytes both ways, so what reaches the upstream is what the client sent (less the proxy's header
on the absolute-URI form, as a proxy does).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.support.listener import listening


@dataclass
class Seen:
    method: str
    target: str
    proxy_authorization: str | None


@dataclass
class ForwardProxy:
    port: int = 0
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            self.seen.append(Seen(method, target, headers.get("proxy-authorization")))
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                first = b""
            else:
                parts = urlsplit(target)
                up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
                kept = [line for line in lines[1:] if not line.lower().startswith("proxy-authorization")]
                first = "\r\n".join([f"{method} {target} HTTP/1.1", *kept]).encode("latin-1")
            up_writer.write(first)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            sink.close()


@asynccontextmanager
async def forward_proxy() -> AsyncIterator[ForwardProxy]:
    proxy = ForwardProxy()
    async with listening(proxy.handle) as port:
        proxy.port = port
        yield proxy
