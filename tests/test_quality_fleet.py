"""Probes once per fleet: workers and replicas on one real redis-server share canary verdicts.

Real processes (`serve --workers 2`, and two `serve --workers 1` on their own ports, as two
replicas run) over the emulator, whose request counts show how often the canary was run.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.quality import builtin_canary
from gateway.quality.verdict_store import RedisVerdicts
from tests.support.config import gateway_config, local_url, write_config
from tests.support.gateway import add_fault, emulator_requests
from tests.support.processes import free_port, running

pytest_plugins = ["tests.support.redis_cluster"]  # redis_cluster_url: a real three-node cluster

MODEL = "qwen3-reranker-8b"
VERDICT_WITHIN_SECONDS = 30.0  # a bound for a hung test, not a performance claim


async def get_json(port: int, path: str) -> Any:
    # A new connection each time, so the kernel spreads them over a port's workers.
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return await response.json()


async def verdicts(port: int) -> dict[str, Any]:
    """/readyz's quality section, once both providers have a verdict there."""
    deadline = time.monotonic() + VERDICT_WITHIN_SECONDS
    while True:
        quality = (await get_json(port, "/readyz"))["quality"][MODEL]
        if all(provider["state"] != "unknown" for provider in quality.values()):
            return quality
        assert time.monotonic() < deadline, f"no verdict on port {port}: {quality}"
        await asyncio.sleep(0.1)


@contextmanager
def emulator_with_a_failing_fireworks() -> Iterator[int]:
    port = free_port()
    with running(["emulate", "--port", str(port)], port):
        fault = b'{"provider": "fireworks", "mode": "template"}'
        request = urllib.request.Request(f"http://127.0.0.1:{port}/_emulator/faults", data=fault, method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        yield port


def config_file(tmp_path: Path, emulator_port: int) -> Path:
    probed = {MODEL: {"quality": {"probe_interval_seconds": 3600}}}
    return write_config(tmp_path / "config.toml", gateway_config(local_url(emulator_port), models=probed))


async def probe_calls(emulator_port: int) -> dict[str, int]:
    stats = await get_json(emulator_port, "/_emulator/stats")
    return {provider: stats["requests"].get(provider, 0) for provider in ("deepinfra", "fireworks")}


def one_probe_each() -> dict[str, int]:
    # DeepInfra scores the whole canary in one call; Fireworks takes one query per call.
    return {"deepinfra": 1, "fireworks": len(builtin_canary())}


@pytest.mark.processes
@pytest.mark.slow
async def test_two_replicas_on_one_redis_probe_once_and_answer_one_verdict(tmp_path, redis_url):
    ports = (free_port(), free_port())
    env = {"EMULATOR_KEY": "k", "REDIS_URL": redis_url}
    with emulator_with_a_failing_fireworks() as emulator_port, ExitStack() as stack:
        config = config_file(tmp_path, emulator_port)
        for port in ports:
            stack.enter_context(running(["serve", "--config", str(config), "--port", str(port), "--workers", "1"],
                                        port, env=env))
        first, second = await verdicts(ports[0]), await verdicts(ports[1])
        assert first["fireworks"]["state"] == "failing" and first["deepinfra"]["state"] == "passing"
        # The reader judged the prober's scores itself: the same verdict, standing and agreement.
        deadline = time.monotonic() + VERDICT_WITHIN_SECONDS
        while first != second:  # the second provider's record may reach one replica a tick later
            assert time.monotonic() < deadline, f"the replicas disagree: {first} vs {second}"
            await asyncio.sleep(0.1)
            first, second = await verdicts(ports[0]), await verdicts(ports[1])
        assert first["fireworks"]["mae"] is not None
        assert await probe_calls(emulator_port) == one_probe_each()


@pytest.mark.processes
@pytest.mark.slow
async def test_two_workers_answer_readyz_alike(tmp_path, redis_url):
    port = free_port()
    env = {"EMULATOR_KEY": "k", "REDIS_URL": redis_url}
    with emulator_with_a_failing_fireworks() as emulator_port:
        config = config_file(tmp_path, emulator_port)
        with running(["serve", "--config", str(config), "--port", str(port), "--workers", "2"], port, env=env):
            await verdicts(port)
            deadline = time.monotonic() + VERDICT_WITHIN_SECONDS
            while True:
                # Twenty answers over new connections: both workers answer some, and all alike.
                answers = [await get_json(port, "/readyz") for _ in range(20)]
                seen = {repr(answer["quality"]) for answer in answers}
                if len(seen) == 1:
                    break
                assert time.monotonic() < deadline, f"the workers disagree: {seen}"
                await asyncio.sleep(0.1)
            quality = answers[0]["quality"][MODEL]
            assert quality["fireworks"]["state"] == "failing" and quality["fireworks"]["serves"]
            assert answers[0]["status"] == "ready"
            assert await probe_calls(emulator_port) == one_probe_each()


@pytest.mark.processes
@pytest.mark.slow
async def test_shadow_samples_reach_every_replica(tmp_path, redis_url):
    """One replica's shadow call measures agreement; the other decides cache sharing from the same figures."""
    ports = (free_port(), free_port())
    env = {"EMULATOR_KEY": "k", "REDIS_URL": redis_url}
    emulator_port = free_port()
    with running(["emulate", "--port", str(emulator_port)], emulator_port), ExitStack() as stack:
        shadowed = {MODEL: {"quality": {"shadow_rate": 1.0}}}
        path = write_config(tmp_path / "config.toml", gateway_config(local_url(emulator_port), models=shadowed))
        for port in ports:
            stack.enter_context(running(["serve", "--config", str(path), "--port", str(port), "--workers", "1"],
                                        port, env=env))
        async with aiohttp.ClientSession() as session:
            # Ten pairs: the fewest the agreement figures are reported from.
            body = {"query": "shadowed question", "documents": [f"passage {i} on a shadowed question" for i in range(10)]}
            async with session.post(f"http://127.0.0.1:{ports[0]}/v1/rerank", json=body) as response:
                assert response.status == 200 and response.headers["X-Rerank-Provider"] == "deepinfra"
        deadline = time.monotonic() + VERDICT_WITHIN_SECONDS
        while True:
            seen = [(await get_json(port, "/readyz"))["quality"][MODEL]["fireworks"] for port in ports]
            if all(quality["mae"] is not None for quality in seen):
                break
            assert time.monotonic() < deadline, f"the shadow sample did not reach both replicas: {seen}"
            await asyncio.sleep(0.1)
        assert seen[0] == seen[1] and seen[1]["mae"] == 0.0 and seen[1]["shares_cache"]
        # Probes are off: the only calls are the request and its shadow.
        assert await probe_calls(emulator_port) == {"deepinfra": 1, "fireworks": 1}


async def test_with_redis_down_each_worker_probes_on_its_own(make_gateway, emulator):
    """A lease nobody can grant is granted: a probe too many costs tokens, one too few hides a fault."""
    await add_fault(emulator, "deepinfra", "template")
    dead = free_port()  # nothing listens there

    def probing(raw: dict[str, Any]) -> None:
        raw["models"][MODEL]["quality"] = {"probe_interval_seconds": 3600}

    gateway = await make_gateway(fallback=["deepinfra"], edit=probing, cache={"url": f"redis://127.0.0.1:{dead}"})
    deadline = time.monotonic() + VERDICT_WITHIN_SECONDS
    while (await (await gateway.get("/readyz")).json())["quality"][MODEL]["deepinfra"]["state"] != "failing":
        assert time.monotonic() < deadline, "no probe while Redis was down"
        await asyncio.sleep(0.05)
    assert (await emulator_requests(emulator))["deepinfra"] == 1
    response = await gateway.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"]})
    assert response.status == 200 and response.headers["X-Rerank-Quality"] == "failing; language=en"


async def exercise_the_store(url: str) -> None:
    store = RedisVerdicts.from_url(url, timeout_seconds=2.0)
    try:
        assert await store.claim(MODEL, "deepinfra", "fp1", 60) and not await store.claim(MODEL, "deepinfra", "fp1", 60)
        assert await store.claim(MODEL, "deepinfra", "fp2", 60)  # another config of it: its own lease
        await store.publish(MODEL, "deepinfra", "fp1", b'{"at": 1}')
        await store.publish(MODEL, "fireworks", "fp3", b'{"at": 2}')
        assert await store.records(MODEL) == {("deepinfra", "fp1"): b'{"at": 1}', ("fireworks", "fp3"): b'{"at": 2}'}
        await store.push_samples(MODEL, "fp3", "fp1", [b"[10, 0.5, 1.0]", b"[5, 0.0, null]"])
        assert await store.samples(MODEL, [("fp3", "fp1"), ("fp1", "fp3")]) == [[b"[10, 0.5, 1.0]", b"[5, 0.0, null]"], []]
    finally:
        await store.close()


async def test_the_verdict_store_on_one_server(redis_url):
    await exercise_the_store(redis_url)


async def test_the_verdict_store_on_a_cluster(redis_cluster_url):
    await exercise_the_store(redis_cluster_url)
