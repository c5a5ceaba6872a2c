"""Reaching a provider over a real network: every address tried, limits named, keep-alive races
absorbed, and each way a call can fail told apart, down to the client's 502, /metrics and /status."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.support.gateway import GatewayFactory
from tests.support.listener import listening
from tests.support.provider_calls import SCORES, failure_of, provider_client, score_one, scores
from tests.support.raw_server import Reply, Request, answer, full_backlog, raw_server


class Addresses(AbstractResolver):
    """A resolver that names 127.0.0.1 at each of `ports`, in that order, for any host."""

    def __init__(self, *ports: int) -> None:
        self._ports = ports

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host="127.0.0.1", port=p, family=socket.AF_INET, proto=0,
                              flags=socket.AI_NUMERICHOST) for p in self._ports]

    async def close(self) -> None:
        return None


async def test_a_name_whose_first_address_drops_syns_is_served_by_its_next_one():
    async with full_backlog() as dead, raw_server(scores) as live, provider_client(
        "http://dual-stack.test", resolver=Addresses(dead, live.port), connect_timeout_seconds=5.0,
    ) as client:
        assert await score_one(client) == [0.5]
        assert await score_one(client) == [0.5]
    assert live.accepted == 1


async def test_a_silent_provider_fails_on_the_read_limit_and_says_so():
    async def silent(request: Request) -> Reply:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with raw_server(silent) as server, provider_client(f"http://127.0.0.1:{server.port}", read_timeout_seconds=0.2) as client:
        failure = await failure_of(client)
    assert failure.kind == "read_timeout" and "read_timeout_seconds" in failure.reason and failure.timed_out


async def test_a_name_that_does_not_resolve_is_a_dns_failure():
    async with provider_client("http://nothing-here.invalid") as client:
        failure = await failure_of(client)
    assert failure.kind == "dns" and "cannot resolve nothing-here.invalid" in failure.reason


# --- keep-alive


async def test_a_reused_connection_closed_as_the_request_goes_out_is_replayed_on_a_fresh_one():
    async def close_the_second(request: Request) -> Reply:
        if len(server.requests) == 2:
            return Reply(b"", close=True)  # the idle close that crossed the request on the wire
        return Reply(answer(200, SCORES))

    async with raw_server(close_the_second) as server, provider_client(f"http://127.0.0.1:{server.port}") as client:
        assert await score_one(client) == [0.5]
        assert await score_one(client) == [0.5]
    assert (server.accepted, len(server.requests)) == (2, 3)


async def test_a_fresh_connection_closed_before_the_answer_is_a_connect_failure_not_replayed():
    async def drop(request: Request) -> Reply:
        return Reply(b"", close=True)

    async with raw_server(drop) as server, provider_client(f"http://127.0.0.1:{server.port}") as client:
        failure = await failure_of(client)
    assert (failure.kind, failure.transient) == ("connect", True)  # the guarded call's retries decide
    assert "closed the connection before the answer was whole" in failure.reason
    assert len(server.requests) == 1


async def _delayed(source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay: float) -> None:
    """Bytes and the end of the stream from `source` to `sink`, each `delay` seconds late."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump() -> None:
        data = b"."
        while data:
            try:
                data = await source.read(65536)
            except ConnectionError:
                data = b""
            queue.put_nowait((loop.time() + delay, data))

    pumping = asyncio.create_task(pump())
    try:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                break
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        pumping.cancel()
        sink.close()


@asynccontextmanager
async def delay_relay(target_port: int, delay: float) -> AsyncIterator[int]:
    """A port whose connections reach `target_port` with `delay` seconds each way: a wide area network."""

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
            await asyncio.gather(_delayed(reader, up_writer, delay), _delayed(up_reader, writer, delay))
        except (ConnectionError, asyncio.CancelledError):
            writer.close()

    async with listening(relay) as port:
        yield port


# The race of issue 31 (upstream idle close 1 s, calls ~1 s apart, a 20 ms relay), in half the time.
UPSTREAM_IDLE_SECONDS = 0.5
CALLS = 60


@pytest.mark.slow
async def test_calls_spaced_like_the_upstreams_idle_close_never_fail_on_a_dying_connection():
    rng = random.Random(31)
    outcomes: list[bool | str] = []
    async with raw_server(scores, idle_close=UPSTREAM_IDLE_SECONDS) as upstream, delay_relay(
        upstream.port, 0.02
    ) as port, provider_client(f"http://127.0.0.1:{port}") as client:
        # keepalive_timeout_seconds left at its default, above this upstream's: the race is on.
        for _ in range(CALLS):
            await asyncio.sleep(UPSTREAM_IDLE_SECONDS * rng.uniform(0.9, 1.1))
            try:
                outcomes.append(await score_one(client) == [0.5])
            except Exception as exc:
                outcomes.append(repr(exc))
    failed = [outcome for outcome in outcomes if outcome is not True]
    assert failed == []
    assert upstream.accepted > 1  # the upstream did close connections under the calls


# --- every failure its own outcome, as far as the client


async def test_each_failure_kind_reaches_the_502_the_metrics_and_the_status_page(make_gateway: GatewayFactory):
    async with raw_server() as gone:
        dead_port = gone.port

    async def redirecting(request: Request) -> Reply:
        return Reply(answer(302, b"", "Location: https://elsewhere.example/"))

    async with raw_server(redirecting) as moved:
        providers = {"deepinfra": {"base_url": f"http://127.0.0.1:{dead_port}"},
                     "fireworks": {"base_url": f"http://127.0.0.1:{moved.port}"}}
        gateway = await make_gateway(providers=providers, resilience={"max_retries": 0})
        response = await gateway.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"]})
        assert response.status == 502
        message = (await response.json())["error"]["message"]
    assert f"refused: 127.0.0.1:{dead_port} refused the connection" in message
    assert "redirect: HTTP 302 to https://elsewhere.example/: not followed" in message
    metrics = await (await gateway.get("/metrics")).text()
    assert 'reason="refused"' in metrics and 'reason="redirect"' in metrics
    assert 'reason="http_4xx"' not in metrics and 'reason="connect"' not in metrics
    page = await (await gateway.get("/status")).text()
    assert "refused the connection" in page and "not followed" in page
