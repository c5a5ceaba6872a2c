"""What a provider's answer may be, and what the gateway does with it: caps, decoding, leniency, redirects.

Each upstream here is a RawServer writing bytes by hand; the ones that never stop (an endless
body, an endless header) write as the client reads, so only the client's cap ends them.
"""

from __future__ import annotations

import gzip
import logging
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import pytest

from tests.support.gateway import GatewayFactory
from tests.support.polling import eventually
from tests.support.provider_calls import SCORES, failure_of, provider_client, score_one
from tests.support.raw_server import DEEPINFRA_PATH, Reply, Request, answer, raw_server

CAP = 1024 * 1024  # max_answer_bytes in these tests
PIECE = b"x" * 65536
# What the call may hold at its peak beside the cap itself: the parser's buffers and a few pieces.
MEMORY_BOUND = 8 * CAP


async def endless(piece: bytes) -> AsyncIterator[bytes]:
    while True:
        yield piece


async def chunks(total: int) -> AsyncIterator[bytes]:
    for _ in range(total // len(PIECE)):
        yield b"%x\r\n%s\r\n" % (len(PIECE), PIECE)
    yield b"0\r\n\r\n"


def bomb(decoded_megabytes: int) -> bytes:
    """gzip of zeros: ~1 KB on the wire per MB decoded."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    return b"".join([*(packer.compress(block) for _ in range(decoded_megabytes)), packer.flush()])


async def peak_of_failure(base_url: str) -> tuple[str, str, bool, int]:
    """The call's failure (kind, reason, transient) and the peak of memory Python allocated meanwhile."""
    tracemalloc.start()
    try:
        async with provider_client(base_url, max_answer_bytes=CAP) as client:
            failure = await failure_of(client)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return failure.kind, failure.reason, failure.transient, peak


# --- caps


@pytest.mark.parametrize("name", ["endless chunked body", "50 MB chunked", "50 MB with its length", "gzip bomb"])
async def test_an_answer_past_the_cap_is_too_large_not_retried_closed_and_memory_stays_bounded(name: str):
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (len(PIECE), PIECE)

    async def misbehaving(request: Request) -> Reply:
        if name == "endless chunked body":
            return Reply(head, then=endless(chunk))
        if name == "50 MB chunked":
            return Reply(head, then=chunks(50 * 1024 * 1024))
        if name == "50 MB with its length":
            return Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 52428800\r\n\r\n", then=endless(PIECE))
        return Reply(answer(200, bomb(200), "Content-Encoding: gzip"))  # 200 KB that inflate to 200 MB

    async with raw_server(misbehaving) as server:
        kind, reason, transient, peak = await peak_of_failure(f"http://127.0.0.1:{server.port}")
        await eventually(lambda: server.finished == 1, what="the gateway closed the connection")
    assert (kind, transient) == ("too_large", False)
    assert reason.startswith("too_large: answer too large")
    assert peak < MEMORY_BOUND, f"{name}: peak {peak} bytes"
    assert len(server.requests) == 1


@pytest.mark.parametrize(("head", "what"), [
    (b"HTTP/1.1 200 OK\r\nX-Endless: ", "an endless header line"),
    (b"HTTP/1.1 200 OK\r\n", "endless header lines"),
])
async def test_an_endless_header_is_refused_at_its_limit(head: bytes, what: str):
    piece = b"a" * 65536 if what == "an endless header line" else b"X-Many: 1\r\n" * 1000

    async def endless_head(request: Request) -> Reply:
        return Reply(head, then=endless(piece))

    async with raw_server(endless_head) as server:
        kind, reason, transient, _ = await peak_of_failure(f"http://127.0.0.1:{server.port}")
    assert (kind, transient) == ("too_large", False), reason
    assert "header" in reason


# --- decoding


@pytest.mark.parametrize(("encoding", "packed"), [
    ("gzip", gzip.compress(SCORES)),
    ("deflate", zlib.compress(SCORES)),  # zlib-wrapped, as RFC 9110 means it
    ("deflate", zlib.compress(SCORES, wbits=-zlib.MAX_WBITS)),  # raw, as some servers send it
])
async def test_an_answer_compressed_although_not_asked_for_is_decoded(encoding: str, packed: bytes):
    async def compressed(request: Request) -> Reply:
        return Reply(answer(200, packed, f"Content-Encoding: {encoding}"))

    async with raw_server(compressed) as server, provider_client(f"http://127.0.0.1:{server.port}") as client:
        assert await score_one(client) == [0.5]
        assert server.requests[0].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize(("encoding", "body", "says"), [
    ("br", b"\x1b\x00", "encoded as 'br'"),
    ("gzip", b"\x1f\x8b not gzip", "does not decode"),
    ("gzip", gzip.compress(SCORES)[:-12], "ends before its compressed stream"),
])
async def test_an_answer_that_does_not_decode_is_malformed_and_not_retried(encoding: str, body: bytes, says: str):
    async def broken(request: Request) -> Reply:
        return Reply(answer(200, body, f"Content-Encoding: {encoding}"))

    async with raw_server(broken) as server, provider_client(f"http://127.0.0.1:{server.port}") as client:
        failure = await failure_of(client)
    assert (failure.kind, failure.transient) == ("malformed", False)
    assert says in failure.reason


# --- leniency


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\nContent-Length: %d\nContent-Type: application/json\n\n" % len(SCORES) + SCORES,
    b"HTTP/1.1 200 OK\r\nX-Folded: one\r\n  two\r\nContent-Length: %d\r\n\r\n" % len(SCORES) + SCORES,
], ids=["bare LF", "folded header"])
async def test_answers_old_servers_write_are_read(raw: bytes):
    async def old(request: Request) -> Reply:
        return Reply(raw)

    async with raw_server(old) as server, provider_client(f"http://127.0.0.1:{server.port}") as client:
        assert await score_one(client) == [0.5]


async def test_a_trailer_is_never_taken_for_a_header():
    async def trailing(request: Request) -> Reply:
        body = b'{"error": "busy"}'
        return Reply(b"HTTP/1.1 429 X\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\nRetry-After: 999\r\n\r\n"
                     % (len(body), body))

    async with raw_server(trailing) as server, provider_client(f"http://127.0.0.1:{server.port}") as client:
        failure = await failure_of(client)
    assert (failure.kind, failure.retry_after) == ("http_429", None)


async def test_a_101_is_a_clean_malformed_failure(caplog: pytest.LogCaptureFixture):
    async def upgrading(request: Request) -> Reply:
        return Reply(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")

    with caplog.at_level(logging.ERROR):
        async with raw_server(upgrading) as server, provider_client(f"http://127.0.0.1:{server.port}") as client:
            failure = await failure_of(client)
    assert (failure.kind, failure.transient) == ("malformed", False) and "HTTP 101" in failure.reason
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []


# --- redirects


async def test_a_307_within_the_providers_origin_is_followed_once_with_the_same_body():
    async def moved(request: Request) -> Reply:
        if request.head[0].startswith(f"POST {DEEPINFRA_PATH} "):
            return Reply(answer(307, b"", "Location: /v2/rerank"))
        return Reply(answer(200, SCORES))

    async with raw_server(moved) as server, provider_client(f"http://127.0.0.1:{server.port}") as client:
        assert await score_one(client) == [0.5]
    first, second = server.requests
    assert second.head[0] == "POST /v2/rerank HTTP/1.1" and second.body == first.body


@pytest.mark.parametrize(("status", "location", "says"), [
    (308, "https://elsewhere.example/v1/rerank", "not followed outside the provider's origin"),
    (307, "/again", "HTTP 307 to /again: not followed"),  # the one redirect followed leads to another
    (302, "/v2/rerank", "HTTP 302 to /v2/rerank: not followed"),  # a POST would turn into a GET
    (301, None, "HTTP 301 to (no Location): not followed"),
])
async def test_other_redirects_are_refused_naming_the_location_and_are_not_4xx(
    status: int, location: str | None, says: str,
):
    async def moving(request: Request) -> Reply:
        return Reply(answer(status, b"", *([f"Location: {location}"] if location else [])))

    async with raw_server(moving) as server, provider_client(f"http://127.0.0.1:{server.port}") as client:
        failure = await failure_of(client)
    assert (failure.kind, failure.transient, failure.fallback_allowed) == ("redirect", False, True)
    assert says in failure.reason


# --- an answer that arrived whole but cannot be read


@pytest.mark.parametrize(("body", "headers"), [
    (b"<html>upstream says hi</html>", ()),  # not JSON
    (b"\x1f\x8b not gzip at all", ("Content-Encoding: gzip",)),  # does not decode
])
async def test_a_whole_answer_that_cannot_be_read_is_billed_at_the_estimate_and_not_retried(
    make_gateway: GatewayFactory, body: bytes, headers: tuple[str, ...],
):
    async def unreadable(request: Request) -> Reply:
        return Reply(answer(200, body, *headers))

    async with raw_server(unreadable) as server:
        gateway = await make_gateway(fallback=["deepinfra"], providers={"deepinfra": {
            "base_url": f"http://127.0.0.1:{server.port}", "budget": {"daily_usd": 10.0}}})
        for n in range(3):
            response = await gateway.post("/v1/rerank", json={"query": f"q{n}", "documents": ["a", "b"]})
            assert response.status == 502
        metrics = await (await gateway.get("/metrics")).text()
    assert len(server.requests) == 3  # one call a request: not retried as a connection error would be
    estimated = [line for line in metrics.splitlines()
                 if line.startswith('rerank_gateway_upstream_estimated_tokens_total{provider="deepinfra"}')]
    assert estimated and float(estimated[0].split()[-1]) > 0, "the calls were billed nothing"
