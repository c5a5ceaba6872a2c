"""Fixtures: the provider emulator and the gateway, each on a real socket."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from gateway.emulator import EmulatorConfig, create_emulator_app
from tests.support.config import gateway_config
from tests.support.gateway import EMULATOR_KEY, GatewayFactory, emulator_url


@pytest.fixture(autouse=True)
def _emulator_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR_KEY", EMULATOR_KEY)
    monkeypatch.delenv("REDIS_URL", raising=False)


@pytest.fixture
async def emulator(aiohttp_client: Callable[..., Awaitable[TestClient]]) -> TestClient:
    """The providers' public APIs on a real socket; requires the same key the gateway sends."""
    return await aiohttp_client(create_emulator_app(EmulatorConfig(api_key=EMULATOR_KEY)))


@pytest.fixture
def make_gateway(aiohttp_client: Callable[..., Awaitable[TestClient]], emulator: TestClient) -> GatewayFactory:
    """Build a gateway whose providers are the emulator; `raw` edits the settings before use."""

    async def build(
        fallback: list[str] | None = None,
        edit: Callable[[dict[str, Any]], None] | None = None,
        app_options: dict[str, Any] | None = None,
        **sections: dict[str, Any],
    ) -> TestClient:
        raw = gateway_config(emulator_url(emulator), fallback or ["deepinfra", "fireworks"], **sections)
        if edit is not None:
            raw = copy.deepcopy(raw)
            edit(raw)
        return await aiohttp_client(create_app(parse_config(raw), **(app_options or {})))

    return build


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """One private redis-server for the session; tests that stop it start their own."""
    from tests.support.redis_server import REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        pytest.skip("redis-server binary not found (apt-get install redis-server; .ci/run installs it)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """The session's redis-server, emptied for this test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url
