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

EMULATOR_KEY = "emulator-test-key"
MODEL = "qwen3-reranker-8b"


def provider_entries(emulator_url: str) -> dict[str, dict[str, Any]]:
    """One provider of every kind, all served by the emulator."""
    common = {"base_url": emulator_url, "api_key_env": "EMULATOR_KEY", "timeout_seconds": 5}
    return {
        "deepinfra": {**common, "kind": "deepinfra", "model": "Qwen/Qwen3-Reranker-8B", "price_per_million_tokens": 0.05},
        "fireworks": {
            **common,
            "kind": "fireworks",
            "model": "accounts/fireworks/models/qwen3-reranker-8b",
            "price_per_million_tokens": 0.10,
        },
        "cohere": {**common, "kind": "cohere", "model": "Qwen/Qwen3-Reranker-8B"},
        "tei": {**common, "kind": "tei", "model": "Qwen/Qwen3-Reranker-8B"},
    }


def gateway_settings(emulator_url: str, fallback: list[str], **sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "server": {"default_model": MODEL},
        "models": {
            MODEL: {
                "aliases": ["Qwen/Qwen3-Reranker-8B", "accounts/fireworks/models/qwen3-reranker-8b"],
                "fallback": fallback,
                # No canary probes unless a test asks: they are real calls the emulator counts.
                "quality": {"probe_interval_seconds": 0},
            }
        },
        "providers": provider_entries(emulator_url),
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return raw


@pytest.fixture(autouse=True)
def _emulator_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR_KEY", EMULATOR_KEY)
    monkeypatch.delenv("REDIS_URL", raising=False)


@pytest.fixture
async def emulator(aiohttp_client: Callable[..., Awaitable[TestClient]]) -> TestClient:
    """The providers' public APIs on a real socket; requires the same key the gateway sends."""
    return await aiohttp_client(create_emulator_app(EmulatorConfig(api_key=EMULATOR_KEY)))


def emulator_url(emulator: TestClient) -> str:
    return str(emulator.make_url("")).rstrip("/")


GatewayFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_gateway(aiohttp_client: Callable[..., Awaitable[TestClient]], emulator: TestClient) -> GatewayFactory:
    """Build a gateway whose providers are the emulator; `raw` edits the settings before use."""

    async def build(
        fallback: list[str] | None = None,
        edit: Callable[[dict[str, Any]], None] | None = None,
        app_options: dict[str, Any] | None = None,
        **sections: dict[str, Any],
    ) -> TestClient:
        raw = gateway_settings(emulator_url(emulator), fallback or ["deepinfra", "fireworks"], **sections)
        if edit is not None:
            raw = copy.deepcopy(raw)
            edit(raw)
        return await aiohttp_client(create_app(parse_config(raw), **(app_options or {})))

    return build


async def add_fault(emulator: TestClient, provider: str, mode: str, **options: Any) -> None:
    response = await emulator.post("/_emulator/faults", json={"provider": provider, "mode": mode, **options})
    assert response.status == 200, await response.text()


async def emulator_requests(emulator: TestClient) -> dict[str, int]:
    response = await emulator.get("/_emulator/stats")
    return (await response.json())["requests"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """One private redis-server for the session; tests that stop it start their own."""
    from tests.redis_server import REDIS_SERVER, RedisServer

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
