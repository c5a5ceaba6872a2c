"""The emulator's address and control calls; the gateway's settings over it are tests/support/config.py's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from tests.support.config import EMULATOR_KEY, MODEL

__all__ = ["EMULATOR_KEY", "MODEL", "GatewayFactory", "add_fault", "emulator_requests", "emulator_url"]


def emulator_url(emulator: TestClient) -> str:
    return str(emulator.make_url("")).rstrip("/")


GatewayFactory = Callable[..., Awaitable[TestClient]]


async def add_fault(emulator: TestClient, provider: str, mode: str, **options: Any) -> None:
    response = await emulator.post("/_emulator/faults", json={"provider": provider, "mode": mode, **options})
    assert response.status == 200, await response.text()


async def emulator_requests(emulator: TestClient) -> dict[str, int]:
    response = await emulator.get("/_emulator/stats")
    return (await response.json())["requests"]
