"""Single flight across gateway processes through Redis leases: real processes, a real redis-server.

Each test runs the emulator and two gateway processes (`serve --workers 1`) on one Redis, the
way two replicas (or two workers) run, and checks what the emulator was asked to score.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from tests.support.cache_requests import DI, QUERY, documents, expected
from tests.support.config import gateway_config, local_url, write_config
from tests.support.gateway import GatewayFactory, emulator_requests
from tests.support.polling import eventually
from tests.support.processes import free_port, running
from tests.support.redis_server import RedisServer, own_redis_server

EMULATOR_KEY = "k"
WAITER_POLLS = 10  # lease-script runs that show the waiter waiting: far more than the owner's renewals then
ANSWER_WITHIN_SECONDS = 20.0  # a bound for a hung test, not a performance claim


def script_calls(redis_url: str) -> int:
    """How many Lua scripts this Redis has run (the cache's lookups, polls and renewals)."""
    with redis.Redis.from_url(redis_url) as client:
        stats = client.info("commandstats")
    return sum(int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval"))


@dataclass
class Fleet:
    session: aiohttp.ClientSession
    emulator_port: int
    gateway_ports: tuple[int, int]
    gateways: tuple[subprocess.Popen, subprocess.Popen]

    def post(self, gateway: int, docs: list[str]) -> asyncio.Future[tuple[int, dict[str, str], Any]]:
        return asyncio.ensure_future(self._post(gateway, docs))

    async def _post(self, gateway: int, docs: list[str]) -> tuple[int, dict[str, str], Any]:
        url = f"http://127.0.0.1:{self.gateway_ports[gateway]}{DI}"
        async with self.session.post(url, json={"queries": [QUERY], "documents": docs}) as response:
            return response.status, dict(response.headers), await response.json()

    async def emulator(self, method: str, path: str, **body: Any) -> Any:
        url = f"http://127.0.0.1:{self.emulator_port}{path}"
        async with self.session.request(method, url, json=body or None) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def upstream_calls(self) -> int:
        return (await self.emulator("GET", "/_emulator/stats"))["requests"]["deepinfra"]

    async def wait_for_upstream_calls(self, count: int) -> None:
        async with asyncio.timeout(ANSWER_WITHIN_SECONDS):
            while await self.upstream_calls() < count:
                await asyncio.sleep(0.02)


@contextmanager
def _processes(tmp_path: Path, redis_url: str, lease_ms: float,
               provider_timeout_seconds: float) -> Iterator[tuple[int, tuple[int, int], tuple[subprocess.Popen, ...]]]:
    emulator_port, ports = free_port(), (free_port(), free_port())
    config = tmp_path / "config.toml"
    # Canary probes stay off (the builder's default): their calls would count as paid pairs.
    write_config(config, gateway_config(local_url(emulator_port), ["deepinfra"], cache={"lease_ms": lease_ms},
                                        providers={"deepinfra": {"timeout_seconds": provider_timeout_seconds}}))
    env = {"EMULATOR_KEY": EMULATOR_KEY, "REDIS_URL": redis_url}
    with ExitStack() as stack:
        stack.enter_context(running(["emulate", "--port", str(emulator_port)], emulator_port))
        gateways = tuple(
            stack.enter_context(running(["serve", "--config", str(config), "--port", str(port), "--workers", "1"],
                                        port, env=env))
            for port in ports
        )
        yield emulator_port, ports, gateways


@asynccontextmanager
async def fleet(tmp_path: Path, redis_url: str, lease_ms: float = 60_000,
                provider_timeout_seconds: float = 30) -> AsyncIterator[Fleet]:
    with _processes(tmp_path, redis_url, lease_ms, provider_timeout_seconds) as started:
        emulator_port, ports, gateways = started
        async with aiohttp.ClientSession() as session:
            yield Fleet(session, emulator_port, ports, gateways)  # type: ignore[arg-type]


@pytest.mark.processes
@pytest.mark.slow
async def test_two_processes_missing_the_same_pairs_pay_for_them_once(tmp_path, redis_url):
    async with fleet(tmp_path, redis_url) as gateways:
        await gateways.emulator("POST", "/_emulator/faults", provider="deepinfra", mode="slow", delay_ms=600, count=1)
        docs = documents("once", 12)
        first = gateways.post(0, docs)
        await gateways.wait_for_upstream_calls(1)
        second = gateways.post(1, docs[4:] + documents("fresh", 3))  # 8 pairs in flight elsewhere, 3 new
        answers = await asyncio.wait_for(asyncio.gather(first, second), ANSWER_WITHIN_SECONDS)
        assert [status for status, _, _ in answers] == [200, 200]
        assert answers[0][2]["scores"] == pytest.approx(expected(docs), abs=1e-12)
        assert answers[1][2]["scores"] == pytest.approx(expected(docs[4:] + documents("fresh", 3)), abs=1e-12)
        assert answers[1][1]["X-Rerank-Cache"] == "hits=8; misses=3"  # waited for 8, paid for its own 3
        stats = await gateways.emulator("GET", "/_emulator/stats")
        assert stats["documents"]["deepinfra"] == 15


@pytest.mark.processes
@pytest.mark.slow
async def test_a_call_slower_than_the_lease_is_still_paid_once(tmp_path, redis_url):
    # The owner renews its leases while its call runs: the waiter keeps waiting instead of paying too.
    # Renewed every half lease: a lease of 1 s leaves half a second for a busy machine's stalls.
    async with fleet(tmp_path, redis_url, lease_ms=1000) as gateways:
        await gateways.emulator("POST", "/_emulator/faults", provider="deepinfra", mode="slow", delay_ms=3000, count=1)
        docs = documents("slow-owner", 6)
        owner = gateways.post(0, docs)
        await gateways.wait_for_upstream_calls(1)
        waiter = gateways.post(1, docs)
        answers = await asyncio.wait_for(asyncio.gather(owner, waiter), ANSWER_WITHIN_SECONDS)
        assert [status for status, _, _ in answers] == [200, 200]
        assert answers[1][2]["scores"] == pytest.approx(expected(docs), abs=1e-12)
        assert answers[1][1]["X-Rerank-Cache"] == "hits=6; misses=0"  # waited through the leases it renewed
        stats = await gateways.emulator("GET", "/_emulator/stats")
        assert stats["documents"]["deepinfra"] == 6


@pytest.mark.processes
@pytest.mark.slow
async def test_an_owner_killed_mid_call_holds_its_pairs_only_until_its_lease_runs_out(tmp_path, redis_url):
    async with fleet(tmp_path, redis_url, lease_ms=3000) as gateways:
        await gateways.emulator("POST", "/_emulator/faults", provider="deepinfra", mode="hang", count=1)
        docs = documents("killed", 6)
        owner = gateways.post(0, docs)
        await gateways.wait_for_upstream_calls(1)  # the owner's call hangs upstream now
        polls_before = script_calls(redis_url)
        waiter = gateways.post(1, docs)
        # Waiting shows in Redis: the waiter's polls (every 10-50 ms; the owner renews its lease
        # only every 1.5 s) run the lease script, which it would not do had it gone upstream.
        await eventually(lambda: script_calls(redis_url) >= polls_before + WAITER_POLLS, what="the waiter polling")
        assert not waiter.done() and await gateways.upstream_calls() == 1  # waiting, not paying
        gateways.gateways[0].send_signal(signal.SIGKILL)
        status, headers, body = await asyncio.wait_for(waiter, ANSWER_WITHIN_SECONDS)
        assert status == 200 and body["scores"] == pytest.approx(expected(docs), abs=1e-12)
        assert headers["X-Rerank-Cache"] == "hits=0; misses=6"  # took the pairs over and paid once
        assert await gateways.upstream_calls() == 2
        with pytest.raises(aiohttp.ClientError):
            await owner


@pytest.mark.processes
@pytest.mark.slow
async def test_an_owner_whose_call_failed_hands_over_at_once_not_at_lease_end(tmp_path, redis_url):
    # A lease of ten minutes: the waiter can only answer within the bound if the owner released.
    async with fleet(tmp_path, redis_url, lease_ms=600_000, provider_timeout_seconds=1) as gateways:
        await gateways.emulator("POST", "/_emulator/faults", provider="deepinfra", mode="hang", count=1)
        docs = documents("failed", 5)
        owner = gateways.post(0, docs)
        await gateways.wait_for_upstream_calls(1)
        waiter = gateways.post(1, docs)
        (owner_status, _, _), (status, headers, body) = await asyncio.wait_for(
            asyncio.gather(owner, waiter), ANSWER_WITHIN_SECONDS)
        assert owner_status == 504  # its provider call timed out
        assert status == 200 and body["scores"] == pytest.approx(expected(docs), abs=1e-12)
        assert headers["X-Rerank-Cache"] == "hits=0; misses=5"


@pytest.mark.processes
@pytest.mark.slow
@own_redis_server
async def test_an_owner_whose_write_failed_hands_over_once_redis_is_back_not_at_lease_end(tmp_path):
    # A persistent Redis, killed while the owner's call runs and restarted once it has answered: its
    # lease survives (in the AOF), its write and its release found no Redis. Without a release
    # retried, the waiter would wait half its deadline (the lease outlasts that).
    lease_seconds = 30.0
    server = RedisServer(tmp_path, extra_args=["--appendonly", "yes"])
    server.start()
    try:
        async with fleet(tmp_path, server.url, lease_ms=lease_seconds * 1000) as gateways:
            await gateways.emulator("POST", "/_emulator/faults", provider="deepinfra", mode="slow", delay_ms=1500,
                                    count=1)
            docs = documents("write-failed", 5)
            owner = gateways.post(0, docs)
            await gateways.wait_for_upstream_calls(1)
            await asyncio.sleep(0.2)  # past appendfsync's second, well before the call ends: the lease is in the AOF
            server.stop()  # SIGKILL
            status, headers, _ = await asyncio.wait_for(owner, ANSWER_WITHIN_SECONDS)
            assert (status, headers["X-Rerank-Cache"]) == (200, "hits=0; misses=5")  # answered, stored nothing
            await asyncio.to_thread(server.start)
            with server.client() as raw:
                assert raw.keys("rr:*:leases"), "the owner's lease did not outlive the restart"
            for other in ("warm-1", "warm-2"):  # a restart costs each pool one failed call: the waiter's own
                assert (await gateways.post(1, documents(other, 1)))[0] == 200
            back_at = asyncio.get_running_loop().time()
            status, headers, body = await asyncio.wait_for(gateways.post(1, docs), ANSWER_WITHIN_SECONDS)
            waited = asyncio.get_running_loop().time() - back_at
            print(f"\nthe waiter answered {waited * 1000:.0f} ms after Redis was back (lease {lease_seconds:g} s)")
            assert status == 200 and body["scores"] == pytest.approx(expected(docs), abs=1e-12)
            assert headers["X-Rerank-Cache"] == "hits=0; misses=5"  # took the pairs over and paid once more
            # Released, not run out: a bound far above a retry, a poll and a call, far below the lease.
            assert waited < lease_seconds / 6
    finally:
        server.stop()


@pytest.mark.processes
@pytest.mark.slow
async def test_waiting_keeps_to_the_request_deadline(tmp_path, redis_url):
    async with fleet(tmp_path, redis_url) as gateways:
        await gateways.emulator("POST", "/_emulator/faults", provider="deepinfra", mode="hang", count=1)
        docs = documents("deadline", 4)
        owner = gateways.post(0, docs)  # holds the pairs under a one-minute lease, hanging upstream
        await gateways.wait_for_upstream_calls(1)
        url = f"http://127.0.0.1:{gateways.gateway_ports[1]}{DI}"
        body = {"queries": [QUERY], "documents": docs}
        async with gateways.session.post(url, json=body, headers={"X-Request-Timeout": "2"}) as response:
            # It waited half its time, then scored the pairs itself within the other half.
            assert response.status == 200
            assert (await response.json())["scores"] == pytest.approx(expected(docs), abs=1e-12)
            assert response.headers["X-Rerank-Cache"] == "hits=0; misses=4"
        owner.cancel()


async def test_requests_in_one_process_share_one_call_with_redis_configured(make_gateway: GatewayFactory, emulator,
                                                                            redis_url):
    from tests.support.gateway import add_fault

    await add_fault(emulator, "deepinfra", "slow", delay_ms=300, count=1)
    gateway = await make_gateway(fallback=["deepinfra"], cache={"url": redis_url})
    docs = documents("one-process", 10)
    responses = await asyncio.gather(*[gateway.post(DI, json={"queries": [QUERY], "documents": docs})
                                       for _ in range(8)])
    for response in responses:
        assert (await response.json())["scores"] == pytest.approx(expected(docs), abs=1e-12)
    assert (await emulator_requests(emulator))["deepinfra"] == 1
