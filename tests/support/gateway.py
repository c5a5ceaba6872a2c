"""The gateway's test settings over the emulator, and the emulator's control calls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

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


def emulator_url(emulator: TestClient) -> str:
    return str(emulator.make_url("")).rstrip("/")


GatewayFactory = Callable[..., Awaitable[TestClient]]


async def add_fault(emulator: TestClient, provider: str, mode: str, **options: Any) -> None:
    response = await emulator.post("/_emulator/faults", json={"provider": provider, "mode": mode, **options})
    assert response.status == 200, await response.text()


async def emulator_requests(emulator: TestClient) -> dict[str, int]:
    response = await emulator.get("/_emulator/stats")
    return (await response.json())["requests"]
