"""HttpTransport over real sockets: keep-alive, the connection limit, framing, closes, cancellation, TLS.

Most cases talk to `RawServer` (tests/support/raw_server.py), scripted per test in bytes written
by hand; the rest talk to the emulator. What a misbehaving network does to it: test_network.py.
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.config import ProviderConfig
from gateway.errors import ProviderFailure
from gateway.models import Batch
from gateway.providers.client import ProviderClient
from gateway.providers.http_errors import ConnectTimeout, Malformed, Refused, TlsFailed, TransportError
from gateway.providers.transport import HttpTransport, TransportSettings
from tests.support.gateway import EMULATOR_KEY, emulator_url
from tests.support.polling import eventually
from tests.support.raw_server import DEEPINFRA_PATH, Reply, Request, answer, full_backlog, raw_server

HEADERS = {"Content-Type": "application/json", "Accept": "application/json", "Authorization": f"Bearer {EMULATOR_KEY}"}
TIMEOUT = aiohttp.ClientTimeout(total=10, sock_connect=2)


@asynccontextmanager
async def transport(
    max_connections: int = 8, idle_seconds: float = 30.0, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[HttpTransport]:
    client = HttpTransport(TransportSettings(max_connections, 5.0, idle_seconds, ssl_context=ssl_context))
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


async def test_connection_close_is_honoured_even_when_the_server_keeps_the_socket_open():
    async def close_header(request: Request) -> Reply:
        return Reply(answer(200, request.body, "Connection: close"))  # and the server does not close

    async with raw_server(close_header) as server, transport() as client:
        assert (await post(client, server.url(), b"1"))[1] == b"1"
        assert (await post(client, server.url(), b"2"))[1] == b"2"
        assert server.accepted == 2
        await eventually(lambda: server.closed_by_client == 2, what="the client closed both connections")


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
        assert (await post(client, server.url(), b"2"))[1] == b"2"
        assert server.accepted == 2


async def test_a_server_closing_mid_answer_is_a_connect_failure_of_the_provider_call():
    async def cut(request: Request) -> Reply:
        return Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"scores\": [", close=True)

    async with raw_server(cut) as server:
        with pytest.raises(TransportError, match="before the answer was whole"):
            async with transport() as client:
                await post(client, server.url())
        provider = provider_client(f"http://127.0.0.1:{server.port}")
        await provider.start()
        try:
            failure = await failure_of(provider)
        finally:
            await provider.close()
        assert (failure.kind, failure.transient) == ("connect", True)
        assert "closed the connection before the answer was whole" in str(failure)


async def test_garbage_instead_of_http_is_a_malformed_answer_and_the_connection_is_dropped():
    async def garbage(request: Request) -> Reply:
        return Reply(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    async with raw_server(garbage) as server, transport() as client:
        with pytest.raises(Malformed):
            await post(client, server.url())
        await eventually(lambda: server.closed_by_client == 1, what="the client dropped the connection")


async def test_a_refused_connection_is_a_connect_failure():
    async with raw_server() as server:
        port = server.port
    async with transport() as client:
        with pytest.raises(Refused, match=f"127.0.0.1:{port} refused the connection"):
            await post(client, f"http://127.0.0.1:{port}/")


async def test_a_connect_slower_than_the_connect_timeout_is_a_timeout_failure():
    async with full_backlog() as port:
        client = HttpTransport(TransportSettings(8, connect_timeout=0.2))
        try:
            with pytest.raises(ConnectTimeout, match="took over connect_timeout_seconds"):
                await client.post(f"http://127.0.0.1:{port}/", b"{}", HEADERS)  # the transport's own limit
        finally:
            await client.close()
        provider = provider_client(f"http://127.0.0.1:{port}", connect_timeout_seconds=0.2)
        await provider.start()
        try:
            failure = await failure_of(provider)
        finally:
            await provider.close()
        assert failure.kind == "connect_timeout" and failure.timed_out  # a 504, as the call's own timeout
        assert "connect_timeout_seconds" in failure.reason


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
        await eventually(lambda: server.closed_by_client == 1, what="the server saw the connection closed")


async def test_closing_the_transport_fails_the_calls_in_flight_and_closes_every_connection():
    async def never(request: Request) -> Reply:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with raw_server(never) as server:
        client = HttpTransport(TransportSettings(1, connect_timeout=5.0))
        in_flight = asyncio.create_task(post(client, server.url()))
        await eventually(lambda: len(server.requests) == 1, what="the call reached the server")
        waiting = asyncio.create_task(post(client, server.url()))
        await asyncio.sleep(0)
        await client.close()
        for call in (in_flight, waiting):
            with pytest.raises(TransportError):
                await call
        await eventually(lambda: server.closed_by_client == 1, what="the server saw the connection closed")
        with pytest.raises(TransportError, match="closed"):
            await post(client, server.url())
        assert server.accepted == 1


async def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent():
    async with raw_server() as server, transport() as client:
        with pytest.raises(ValueError, match="header injection"):
            await client.post(server.url(), b"{}", {**HEADERS, "Authorization": "Bearer k\r\nX-Forged: 1"}, TIMEOUT)
        assert server.requests == []  # refused before a byte of the request went out


# --- the emulator, and ProviderClient on it


async def test_the_emulator_answers_over_one_connection(emulator: TestClient):
    url = emulator_url(emulator) + DEEPINFRA_PATH
    async with transport() as client:
        for n in range(3):
            body = orjson.dumps({"queries": [f"q{n}"] * 2, "documents": ["a", "b"]})
            status, raw, _ = await client.post(url, body, HEADERS, TIMEOUT)
            assert status == 200 and len(orjson.loads(raw)["scores"]) == 2


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
        with pytest.raises(TlsFailed, match=r"certificate refused: self.signed certificate"):
            await post(client, f"https://localhost:{server.port}/")
        assert server.requests == []
