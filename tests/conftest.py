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

# The fast set (README, "Tests"): what runs in well under a minute here, no browser, SDK or cluster.
FAST = "not slow and not browser and not clients and not cluster"
# Tests that take these fixtures run against a real redis-server, or the cluster: marked here so
# that a new test is marked by what it uses. Tests that start a RedisServer themselves say so.
MARKED_BY_FIXTURE = {"redis_server": "redis", "redis_url": "redis", "redis_cluster": "cluster",
                     "redis_cluster_url": "cluster"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast", action="store_true", help=f'only the fast set: -m "{FAST}" (with any -m given)')


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--fast"):
        asked = config.option.markexpr
        config.option.markexpr = f"({asked}) and ({FAST})" if asked else FAST


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for name in sorted({MARKED_BY_FIXTURE[f] for f in getattr(item, "fixturenames", ()) if f in MARKED_BY_FIXTURE}):
            item.add_marker(name)


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
