"""HttpTransport over real sockets: keep-alive, the connection limit, framing, closes, cancellation, TLS.

Most cases talk to `RawServer`, an asyncio server scripted per test that counts the connections
it accepts and answers in bytes written by hand, so a chunked answer, a `Connection: close` or a
connection cut mid-answer is exactly what the test says; the rest talk to the emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.config import ProviderConfig
from gateway.errors import ProviderFailure
from gateway.models import Batch
from gateway.providers.client import ProviderClient
from gateway.providers.transport import HttpTransport
from tests.support.gateway import EMULATOR_KEY, emulator_url
from tests.support.polling import eventually

HEADERS = {"Content-Type": "application/json", "Accept": "application/json", "Authorization": f"Bearer {EMULATOR_KEY}"}
TIMEOUT = aiohttp.ClientTimeout(total=10, sock_connect=2)
DEEPINFRA_PATH = "/v1/inference/Qwen/Qwen3-Reranker-8B"


@dataclass
class Request:
    head: list[str]  # the request line, then each header line as sent
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass
class Reply:
    data: bytes
    close: bool = False  # the server closes the connection once `data` is written


Script = Callable[[Request], Awaitable[Reply]]


def answer(status: int = 200, body: bytes = b'{"ok": true}', *headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def ok(request: Request) -> Reply:
    return Reply(answer(body=request.body))  # the body echoed back, so each call's answer is its own


@dataclass
class RawServer:
    script: Script
    port: int = 0
    accepted: int = 0
    requests: list[Request] = field(default_factory=list)
    _readers: list[asyncio.StreamReader] = field(default_factory=list)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        self._readers.append(reader)
        self._writers.append(writer)
        try:
            while (request := await read_request(reader)) is not None:
                self.requests.append(request)
                reply = await self.script(request)
                writer.write(reply.data)
                await writer.drain()
                if reply.close:
                    return
        except (ConnectionError, asyncio.CancelledError):
            # Cancelled: the test is over. Not re-raised: asyncio 3.11 logs a cancelled handler as an error.
            return
        finally:
            writer.close()

    @property
    def closed_by_client(self) -> int:
        """Connections whose client end has closed (EOF read, or seen with a script still holding the answer)."""
        return sum(reader.at_eof() for reader in self._readers)

    def url(self, path: str = DEEPINFRA_PATH) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[:-2]
    except asyncio.IncompleteReadError:
        return None
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:])}
    return Request(head, headers, await reader.readexactly(int(headers.get("content-length", "0"))))


@asynccontextmanager
async def raw_server(script: Script = ok, tls: ssl.SSLContext | None = None) -> AsyncIterator[RawServer]:
    server = RawServer(script)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        for task in server._tasks:
            task.cancel()
        await asyncio.gather(*server._tasks, return_exceptions=True)
        for writer in server._writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in server._writers), return_exceptions=True)
        await listener.wait_closed()


@asynccontextmanager
async def transport(
    max_connections: int = 8, idle_seconds: float = 30.0, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[HttpTransport]:
    client = HttpTransport(max_connections, connect_timeout=5.0, idle_seconds=idle_seconds, ssl_context=ssl_context)
    try:
        yield client
    finally:
        await client.close()


async def post(client: HttpTransport, url: str, body: bytes = b"{}") -> tuple[int, bytes, str | None]:
    return await client.post(url, body, HEADERS, TIMEOUT)


def provider_client(base_url: str, **overrides: object) -> ProviderClient:
    config = ProviderConfig.model_validate({
        "kind": "deepinfra", "base_url": base_url, "model": "Qwen/Qwen3-Reranker-8B", "api_key_env": "KEY", **overrides,
    })
    return ProviderClient("upstream", config, EMULATOR_KEY)


async def failure_of(client: ProviderClient) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as caught:
        await client.score(Batch(["q"], ["a"], None))
    return caught.value


# --- keep-alive and the pool


async def test_sequential_calls_share_one_keep_alive_connection():
    async with raw_server() as server, transport() as client:
        answers = [await post(client, server.url(), f'{{"n": {n}}}'.encode()) for n in range(5)]
        assert answers == [(200, f'{{"n": {n}}}'.encode(), None) for n in range(5)]
        assert server.accepted == 1
        assert client.open_connections() == 1


async def test_the_request_is_what_the_provider_call_sends_and_nothing_it_did_not_ask_for():
    async with raw_server() as server, transport() as client:
        body = b'{"queries": ["q"], "documents": ["a"]}'
        await client.post(server.url(), body, {**HEADERS, "traceparent": "00-abc-def-01"}, TIMEOUT)
        [request] = server.requests
        assert request.head[0] == f"POST {DEEPINFRA_PATH} HTTP/1.1"
        names = [line.partition(":")[0].lower() for line in request.head[1:]]
        assert sorted(names) == sorted(["host", "user-agent", "accept-encoding", "content-type", "accept",
                                        "authorization", "traceparent", "content-length"])
        assert request.headers["host"] == f"127.0.0.1:{server.port}"
        assert request.headers["accept-encoding"] == "identity"  # no compression asked for
        assert request.headers["authorization"] == f"Bearer {EMULATOR_KEY}"
        assert request.headers["traceparent"] == "00-abc-def-01"
        assert request.body == body and request.headers["content-length"] == str(len(body))


async def test_concurrent_calls_never_open_more_than_max_connections():
    held = asyncio.Event()

    async def hold(request: Request) -> Reply:
        await held.wait()
        return Reply(answer(body=request.body))

    async with raw_server(hold) as server, transport(max_connections=3) as client:
        calls = [asyncio.create_task(post(client, server.url(), b"%d" % n)) for n in range(10)]
        await eventually(lambda: len(server.requests) >= 3, what="three calls reached the server")
        assert client.open_connections() == 3
        held.set()
        answers = await asyncio.gather(*calls)
        assert [body for _, body, _ in answers] == [b"%d" % n for n in range(10)]
        assert server.accepted == 3  # the seven others waited for a connection instead of opening one


async def test_calls_waiting_for_a_connection_get_it_in_the_order_they_came():
    async with raw_server() as server, transport(max_connections=1) as client:
        await asyncio.gather(*(post(client, server.url(), b"%d" % n) for n in range(6)))
        assert [request.body for request in server.requests] == [b"%d" % n for n in range(6)]
        assert server.accepted == 1


async def test_a_waiter_cancelled_before_its_turn_leaves_the_connection_to_the_next():
    held = asyncio.Event()

    async def hold(request: Request) -> Reply:
        if request.body == b"first":
            await held.wait()
        return Reply(answer(body=request.body))

    async with raw_server(hold) as server, transport(max_connections=1) as client:
        first = asyncio.create_task(post(client, server.url(), b"first"))
        await eventually(lambda: len(server.requests) == 1, what="the first call reached the server")
        gone = asyncio.create_task(post(client, server.url(), b"gone"))
        last = asyncio.create_task(post(client, server.url(), b"last"))
        await asyncio.sleep(0)  # both are waiting for the one connection now
        gone.cancel()
        held.set()
        assert (await first)[1] == b"first" and (await last)[1] == b"last"
        assert gone.cancelled()
        assert [request.body for request in server.requests] == [b"first", b"last"]
        assert server.accepted == 1


async def test_an_idle_connection_is_closed_after_idle_seconds():
    async with raw_server() as server, transport(idle_seconds=0.2) as client:
        await post(client, server.url())
        await eventually(lambda: server.closed_by_client == 1, what="the server saw the idle connection closed")
        assert client.open_connections() == 0
        assert (await post(client, server.url()))[0] == 200
        assert server.accepted == 2


# --- framing


async def test_a_chunked_answer_is_read_whole_and_the_connection_kept():
    async def chunked(request: Request) -> Reply:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        return Reply(head + b"5\r\n{\"a\":\r\n3\r\n 12\r\n1\r\n}\r\n0\r\n\r\n")

    async with raw_server(chunked) as server, transport() as client:
        assert await post(client, server.url()) == (200, b'{"a": 12}', None)
        assert await post(client, server.url()) == (200, b'{"a": 12}', None)
        assert server.accepted == 1


async def test_an_answer_without_a_length_ends_where_the_server_closes():
    async def until_close(request: Request) -> Reply:
        return Reply(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b'{"long": "' + b"x" * 100_000 + b'"}', close=True)

    async with raw_server(until_close) as server, transport() as client:
        status, body, _ = await post(client, server.url())
        assert status == 200 and orjson.loads(body) == {"long": "x" * 100_000}
        assert client.open_connections() == 0


async def test_connection_close_is_honoured_even_when_the_server_keeps_the_socket_open():
    async def close_header(request: Request) -> Reply:
        return Reply(answer(200, request.body, "Connection: close"))  # and the server does not close

    async with raw_server(close_header) as server, transport() as client:
        assert (await post(client, server.url(), b"1"))[1] == b"1"
        assert (await post(client, server.url(), b"2"))[1] == b"2"
        assert server.accepted == 2
        await eventually(lambda: server.closed_by_client == 2, what="the client closed both connections")
        assert client.open_connections() == 0


async def test_an_answer_compressed_although_not_asked_for_is_decoded():
    async def gzipped(request: Request) -> Reply:
        return Reply(answer(200, gzip.compress(b'{"scores": [0.5]}'), "Content-Encoding: gzip"))

    async with raw_server(gzipped) as server, transport() as client:
        assert await post(client, server.url()) == (200, b'{"scores": [0.5]}', None)


async def test_a_non_200_comes_back_with_its_retry_after():
    async def limited(request: Request) -> Reply:
        return Reply(answer(429, b'{"error": {"message": "slow down"}}', "Retry-After: 7"))

    async with raw_server(limited) as server, transport() as client:
        assert await post(client, server.url()) == (429, b'{"error": {"message": "slow down"}}', "7")
        assert await post(client, server.url()) == (429, b'{"error": {"message": "slow down"}}', "7")
        assert server.accepted == 1  # an error status is a whole answer: the connection stays


# --- closes, errors and cancellation


async def test_a_connection_the_server_closed_while_idle_is_not_used_for_the_next_call():
    async def answer_then_close(request: Request) -> Reply:
        return Reply(answer(body=request.body), close=True)  # no Connection: close said: an idle timeout

    async with raw_server(answer_then_close) as server, transport() as client:
        assert (await post(client, server.url(), b"1"))[1] == b"1"
        await eventually(lambda: client.open_connections() == 0, what="the client noticed the close")
        assert (await post(client, server.url(), b"2"))[1] == b"2"
        assert server.accepted == 2


async def test_a_server_closing_mid_answer_is_a_connect_failure_of_the_provider_call():
    async def cut(request: Request) -> Reply:
        return Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"scores\": [", close=True)

    async with raw_server(cut) as server:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with transport() as client:
                await post(client, server.url())
        provider = provider_client(f"http://127.0.0.1:{server.port}")
        await provider.start()
        try:
            failure = await failure_of(provider)
        finally:
            await provider.close()
        assert (failure.kind, failure.transient) == ("connect", True)
        assert "ServerDisconnectedError" in str(failure)


async def test_garbage_instead_of_http_is_a_client_error_and_the_connection_is_dropped():
    async def garbage(request: Request) -> Reply:
        return Reply(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    async with raw_server(garbage) as server, transport() as client:
        with pytest.raises(aiohttp.ClientError):
            await post(client, server.url())
        assert client.open_connections() == 0


async def test_a_refused_connection_is_a_connect_failure():
    async with raw_server() as server:
        port = server.port
    async with transport() as client:
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(client, f"http://127.0.0.1:{port}/")
        assert client.open_connections() == 0


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


async def test_a_connect_slower_than_the_connect_timeout_is_a_timeout_failure():
    async with full_backlog() as port:
        client = HttpTransport(8, connect_timeout=0.2)
        try:
            with pytest.raises(aiohttp.ServerTimeoutError) as caught:
                await post(client, f"http://127.0.0.1:{port}/")
        finally:
            await client.close()
        assert isinstance(caught.value, TimeoutError)  # as aiohttp's connect timeout is
        provider = provider_client(f"http://127.0.0.1:{port}", connect_timeout_seconds=0.2)
        await provider.start()
        try:
            assert (await failure_of(provider)).kind == "timeout"
        finally:
            await provider.close()


async def test_a_cancelled_call_closes_its_connection_and_the_next_call_opens_another():
    answering = asyncio.Event()

    async def silent_first(request: Request) -> Reply:
        if not answering.is_set():
            await asyncio.Event().wait()  # never answers the first call
        return Reply(answer(body=request.body))

    async with raw_server(silent_first) as server, transport(max_connections=1) as client:
        call = asyncio.create_task(post(client, server.url()))
        await eventually(lambda: len(server.requests) == 1, what="the call reached the server")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert client.open_connections() == 0  # its slot is free at once, for the next call
        await eventually(lambda: server.closed_by_client == 1, what="the server saw the cancelled call's connection close")
        answering.set()
        assert (await post(client, server.url(), b"next"))[1] == b"next"
        assert server.accepted == 2


async def test_a_timeout_around_the_call_closes_the_connection():
    async def never(request: Request) -> Reply:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with raw_server(never) as server, transport() as client:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await post(client, server.url())
        assert client.open_connections() == 0


async def test_closing_the_transport_fails_the_calls_in_flight_and_closes_every_connection():
    async def never(request: Request) -> Reply:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with raw_server(never) as server:
        client = HttpTransport(1, connect_timeout=5.0)
        in_flight = asyncio.create_task(post(client, server.url()))
        await eventually(lambda: len(server.requests) == 1, what="the call reached the server")
        waiting = asyncio.create_task(post(client, server.url()))
        await asyncio.sleep(0)
        await client.close()
        for call in (in_flight, waiting):
            with pytest.raises(aiohttp.ClientConnectionError):
                await call
        await eventually(lambda: server.closed_by_client == 1, what="the server saw the connection closed")
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(client, server.url())
        assert server.accepted == 1


async def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent():
    async with raw_server() as server, transport() as client:
        with pytest.raises(ValueError, match="line break"):
            await client.post(server.url(), b"{}", {**HEADERS, "Authorization": "Bearer k\r\nX-Forged: 1"}, TIMEOUT)
        assert server.accepted == 0


# --- the emulator, and ProviderClient on it


async def test_the_emulator_answers_over_one_connection(emulator: TestClient):
    url = emulator_url(emulator) + DEEPINFRA_PATH
    async with transport() as client:
        for n in range(3):
            body = orjson.dumps({"queries": [f"q{n}"] * 2, "documents": ["a", "b"]})
            status, raw, _ = await client.post(url, body, HEADERS, TIMEOUT)
            assert status == 200 and len(orjson.loads(raw)["scores"]) == 2
        assert client.open_connections() == 1


async def test_a_thousand_passage_body_goes_up_and_its_scores_come_back(emulator: TestClient):
    provider = provider_client(emulator_url(emulator), max_batch=1000)
    await provider.start()
    try:
        documents = [f"passage {n}: " + "retrieval ranking cache " * 15 for n in range(1000)]
        scores, usage = await provider.score(Batch(["what ranks?"] * 1000, documents, None))
    finally:
        await provider.close()
    assert len(scores) == 1000 and all(0.0 <= score <= 1.0 for score in scores)
    assert usage.tokens > 0


async def test_a_429_from_the_emulator_is_a_rate_limit_failure_with_its_retry_after(emulator: TestClient):
    rule = {"provider": "deepinfra", "mode": "status", "status": 429, "retry_after": 5, "count": 1}
    async with emulator.post("/_emulator/faults", json=rule) as resp:
        assert resp.status == 200
    provider = provider_client(emulator_url(emulator))
    await provider.start()
    try:
        failure = await failure_of(provider)
        scores, _ = await provider.score(Batch(["q"], ["a"], None))  # the rule was for one call
    finally:
        await provider.close()
    assert (failure.kind, failure.retry_after) == ("http_429", "5")
    assert len(scores) == 1


# --- https


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl CLI to make a test certificate with (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def server_tls(cert: Path, key: Path, names_asked: list[str | None]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def note_name(_socket: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        names_asked.append(name)

    context.sni_callback = note_name
    return context


async def test_https_with_sni_over_one_keep_alive_connection(certificate: tuple[Path, Path]):
    cert, key = certificate
    names_asked: list[str | None] = []
    trusting = ssl.create_default_context(cafile=str(cert))
    async with raw_server(tls=server_tls(cert, key, names_asked)) as server:
        async with transport(ssl_context=trusting) as client:
            url = f"https://localhost:{server.port}{DEEPINFRA_PATH}"
            assert await post(client, url, b"1") == (200, b"1", None)
            assert await post(client, url, b"2") == (200, b"2", None)
        assert server.accepted == 1
        assert names_asked == ["localhost"]
        assert server.requests[0].headers["host"] == f"localhost:{server.port}"


async def test_https_refuses_a_certificate_the_trust_store_does_not_hold(certificate: tuple[Path, Path]):
    cert, key = certificate
    async with raw_server(tls=server_tls(cert, key, [])) as server, transport() as client:
        with pytest.raises(aiohttp.ClientConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await post(client, f"https://localhost:{server.port}/")
        assert client.open_connections() == 0
        assert server.requests == []
