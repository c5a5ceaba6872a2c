"""Live config: reload by /admin/reload, file change and SIGHUP; requests in flight keep their config."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from gateway.app import create_app
from gateway.config import load_config
from gateway.web.edge import LIVE
from tests.support.config import changed, gateway_config, local_url, write_config
from tests.support.gateway import EMULATOR_KEY, add_fault, emulator_requests
from tests.support.polling import eventually
from tests.support.processes import REPO, GatewayProcess, free_port, hup_until_listening, running

ADMIN = {"Authorization": "Bearer admin-secret"}
BODY = {"query": "what does it cost?", "documents": ["it is free", "it opens at eight"]}


def reloadable(path: Path, emulator_port: int, fallback: list[str], poll: float = 0, broken: bool = False) -> None:
    raw = gateway_config(local_url(emulator_port), fallback, server={"admin_key_env": "ADMIN_KEY", "reload_poll_seconds": poll})
    write_config(path, changed(raw, "providers.fireworks.kind", "fireworx") if broken else raw)


@pytest.fixture
def config_file(tmp_path, emulator, monkeypatch) -> Path:
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")
    path = tmp_path / "config.toml"
    reloadable(path, emulator.server.port, ["deepinfra", "fireworks"])
    return path


async def gateway_from(aiohttp_client, path: Path):
    return await aiohttp_client(create_app(load_config(path), config_path=path))


def fresh(i: int) -> dict:
    return {"query": f"question {i}", "documents": [f"passage {i}-a", f"passage {i}-b"]}


async def test_admin_reload_changes_the_fallback_order(aiohttp_client, emulator, config_file):
    gateway = await gateway_from(aiohttp_client, config_file)
    assert (await gateway.post("/v1/rerank", json=fresh(1))).headers["X-Rerank-Provider"] == "deepinfra"

    reloadable(config_file, emulator.server.port, ["fireworks", "deepinfra"])
    response = await gateway.post("/admin/reload", headers=ADMIN)
    assert response.status == 200, await response.text()
    assert (await response.json())["models"] == {"qwen3-reranker-8b": ["fireworks", "deepinfra"]}
    assert (await gateway.post("/v1/rerank", json=fresh(2))).headers["X-Rerank-Provider"] == "fireworks"

    reloadable(config_file, emulator.server.port, ["deepinfra"])  # SiliconFlow-style drop
    await gateway.post("/admin/reload", headers=ADMIN)
    assert (await gateway.get("/v1/models")).status == 200
    assert (await (await gateway.get("/v1/models")).json())["data"][0]["fallback"] == ["deepinfra"]


async def test_an_invalid_file_is_refused_and_the_running_config_stays(aiohttp_client, emulator, config_file):
    gateway = await gateway_from(aiohttp_client, config_file)
    reloadable(config_file, emulator.server.port, ["fireworks"], broken=True)
    response = await gateway.post("/admin/reload", headers=ADMIN)
    assert response.status == 422
    error = (await response.json())["error"]
    assert error["type"] == "invalid_config" and "'fireworx' is not one of" in error["message"]
    assert (await gateway.post("/v1/rerank", json=fresh(3))).headers["X-Rerank-Provider"] == "deepinfra"


async def test_admin_needs_the_key_and_is_off_without_one(aiohttp_client, emulator, config_file, monkeypatch):
    gateway = await gateway_from(aiohttp_client, config_file)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "admin-secret"}):
        response = await gateway.post("/admin/reload", headers=headers)
        assert response.status == 401
        assert "admin-secret" not in await response.text()
    # Keys are read once per config generation: unsetting the variable turns admin off at the next reload.
    monkeypatch.delenv("ADMIN_KEY")
    assert (await gateway.post("/admin/reload", headers=ADMIN)).status == 200
    response = await gateway.post("/admin/reload", headers=ADMIN)
    message = (await response.json())["error"]["message"]
    assert response.status == 404 and message == "admin endpoints are off: $ADMIN_KEY ([server] admin_key_env) is empty or not set"


async def test_a_changed_file_is_reloaded_by_itself(aiohttp_client, emulator, config_file, caplog):
    reloadable(config_file, emulator.server.port, ["deepinfra", "fireworks"], poll=0.05)
    gateway = await gateway_from(aiohttp_client, config_file)
    reloadable(config_file, emulator.server.port, ["fireworks"], poll=0.05)
    attempts = iter(range(100, 1_000_000))

    async def serves_from_fireworks() -> bool:
        response = await gateway.post("/v1/rerank", json=fresh(next(attempts)))
        return response.headers["X-Rerank-Provider"] == "fireworks"

    await eventually(serves_from_fireworks, what="the changed config file being picked up", every=0.05)

    def refused_the_broken_file() -> bool:
        return any("config file changed but was not loaded" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.ERROR, logger="gateway"):
        reloadable(config_file, emulator.server.port, ["deepinfra"], poll=0.05, broken=True)
        # The watcher has demonstrably read the broken file (and refused it) before the check below.
        await eventually(refused_the_broken_file, what="the watcher refusing the broken file")
    assert (await gateway.post("/v1/rerank", json=fresh(999))).headers["X-Rerank-Provider"] == "fireworks"


async def test_requests_in_flight_finish_on_the_config_they_started_with(aiohttp_client, emulator, config_file):
    gateway = await gateway_from(aiohttp_client, config_file)
    # Long enough that a reload and one more request on a busy CI machine end well before it does.
    await add_fault(emulator, "deepinfra", "slow", delay_ms=1500, count=1)
    in_flight = asyncio.ensure_future(gateway.post("/v1/rerank", json=fresh(5)))
    await eventually(lambda: gateway.app[LIVE].current.in_flight == 1, what="the slow request in flight")
    first_generation = gateway.app[LIVE].current
    reloadable(config_file, emulator.server.port, ["fireworks"])
    assert (await gateway.post("/admin/reload", headers=ADMIN)).status == 200
    assert (await gateway.post("/v1/rerank", json=fresh(6))).headers["X-Rerank-Provider"] == "fireworks"
    assert not in_flight.done() and first_generation.in_flight == 1
    assert not first_generation.clients["deepinfra"]._transport.closed  # still serving its request
    response = await in_flight
    assert response.status == 200 and response.headers["X-Rerank-Provider"] == "deepinfra"
    # The retired generation closes in a task of its own once idle.
    await eventually(lambda: all(client._transport.closed for client in first_generation.clients.values()),
                     what="the retired generation closing its upstream connections after its last request")


async def test_reload_under_load_drops_nothing(aiohttp_client, emulator, config_file):
    gateway = await gateway_from(aiohttp_client, config_file)
    statuses: list[int] = []
    stop = asyncio.Event()

    async def client(worker: int) -> None:
        for i in range(1000):
            if stop.is_set():
                return
            response = await gateway.post("/v1/rerank", json=fresh(worker * 10_000 + i))
            statuses.append(response.status)

    workers = [asyncio.ensure_future(client(w)) for w in range(8)]
    orders = [["fireworks", "deepinfra"], ["deepinfra", "fireworks"]] * 3 + [["fireworks"]]

    async def more_answers(count: int = 8) -> None:
        """Until the load has had `count` more answers: each reload lands among requests in flight."""
        seen = len(statuses)
        await eventually(lambda: len(statuses) >= seen + count, what=f"{count} more answers under load")

    for order in orders:
        await more_answers()
        reloadable(config_file, emulator.server.port, order)
        assert (await gateway.post("/admin/reload", headers=ADMIN)).status == 200
    await more_answers()
    stop.set()
    await asyncio.gather(*workers)
    assert set(statuses) == {200}
    before = (await emulator_requests(emulator))["deepinfra"]
    for i in range(5):
        assert (await gateway.post("/v1/rerank", json=fresh(900_000 + i))).headers["X-Rerank-Provider"] == "fireworks"
    assert (await emulator_requests(emulator))["deepinfra"] == before


@pytest.mark.processes
@pytest.mark.slow
async def test_sighup_reloads_a_running_process(tmp_path):
    emulator_port, gateway_port = free_port(), free_port()
    path = tmp_path / "config.toml"
    reloadable(path, emulator_port, ["deepinfra", "fireworks"])
    env = {"EMULATOR_KEY": "k", "ADMIN_KEY": "admin-secret"}
    with running(["emulate", "--port", str(emulator_port)], emulator_port), \
         running(["serve", "--config", str(path), "--port", str(gateway_port)], gateway_port, env=env) as gateway:
        url = f"http://127.0.0.1:{gateway_port}/v1/rerank"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=fresh(1)) as response:
                assert response.status == 200, await response.text()
                assert response.headers["X-Rerank-Provider"] == "deepinfra"
            reloadable(path, emulator_port, ["fireworks"])
            gateway.send_signal(signal.SIGHUP)
            attempts = iter(range(10, 1_000_000))

            async def serves_from_fireworks() -> bool:
                async with session.post(url, json=fresh(next(attempts))) as response:
                    assert response.status == 200
                    return response.headers["X-Rerank-Provider"] == "fireworks"

            await eventually(serves_from_fireworks, what="SIGHUP reloading the config", every=0.1)


@pytest.mark.processes
@pytest.mark.slow
async def test_sighup_while_starting_is_a_reload_once_it_serves(tmp_path):
    """SIGHUP's default kills a process: one sent while the gateway starts (config management
    editing the file and sending it, racing a restart) waits until the gateway can reload, and
    then the edit it announced is served."""
    emulator_port, gateway_port = free_port(), free_port()
    path = tmp_path / "config.toml"
    reloadable(path, emulator_port, ["deepinfra", "fireworks"])
    env = {**os.environ, "EMULATOR_KEY": "k"}
    with running(["emulate", "--port", str(emulator_port)], emulator_port):
        gateway = GatewayProcess(["serve", "--config", str(path), "--port", str(gateway_port)], env, REPO)
        try:
            # Its first line comes after `serve` read the file: the edit is one it has not seen.
            await eventually(lambda: gateway.log.count("open files limit") > 0, what="the gateway's first line")
            reloadable(path, emulator_port, ["fireworks"])
            assert hup_until_listening(gateway, gateway_port, after_line="open files limit") > 0
            await eventually(lambda: gateway.log.count("config reloaded from") == 1, what="the reload asked while starting")
            async with aiohttp.ClientSession() as session, \
                    session.post(f"http://127.0.0.1:{gateway_port}/v1/rerank", json=fresh(1)) as response:
                assert response.status == 200, await response.text()
                assert response.headers["X-Rerank-Provider"] == "fireworks"
            assert gateway.poll() is None
        finally:
            gateway.stop()


async def test_a_provider_refusing_a_revoked_key_is_used_at_once_after_a_reload_with_a_new_one(
    aiohttp_client, emulator, config_file, monkeypatch,
):
    """The emulator answers 401 to a wrong key, as a provider does to a revoked one: the refusal
    belongs to that key, and a reload with the right one ends it without waiting out a back-off."""
    monkeypatch.setenv("EMULATOR_KEY", "revoked")
    gateway = await gateway_from(aiohttp_client, config_file)
    assert (await gateway.post("/v1/rerank", json=fresh(1))).status == 502  # both refuse the revoked key
    state = (await (await gateway.get("/readyz")).json())["providers"]["deepinfra"]
    assert state["state"] == "refusing" and state["status"] == 401 and "invalid api key" in state["reason"]

    monkeypatch.setenv("EMULATOR_KEY", EMULATOR_KEY)
    assert (await gateway.post("/admin/reload", headers=ADMIN)).status == 200
    assert (await (await gateway.get("/readyz")).json())["providers"]["deepinfra"]["state"] == "usable"
    assert (await gateway.post("/v1/rerank", json=fresh(2))).headers["X-Rerank-Provider"] == "deepinfra"
