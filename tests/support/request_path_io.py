"""Run as a script (its own process, since an audit hook stays for the life of the process):
serve a gateway over the emulator and, from its first request on, note every module import and
file open (an audit hook) while each kind of request is sent, twice with new texts. Prints JSON.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.config import parse_config
from gateway.emulator import EmulatorConfig, create_emulator_app
from tests.support.config import EMULATOR_KEY, gateway_config

noted: list[tuple[str, str]] = []
recording = False


def note(event: str, args: tuple[Any, ...]) -> None:
    if recording and event in ("import", "open"):
        noted.append((event, str(args[0])))


async def requests(gateway: TestClient, emulator: TestClient, word: str) -> list[int]:
    """A miss and a hit in two dialects, a 422, a fallback after a provider's 500."""
    statuses = []
    for _ in range(2):
        for path, body in (
            ("/v1/rerank", {"query": f"{word} q", "documents": [f"{word} a", "b"], "return_documents": True}),
            ("/v1/inference/Qwen/Qwen3-Reranker-8B", {"queries": [f"{word} q"], "documents": [f"{word} c"]}),
        ):
            statuses.append((await gateway.post(path, json=body)).status)
    statuses.append((await gateway.post("/v1/rerank", json={"query": word})).status)
    fault = {"provider": "deepinfra", "mode": "status", "status": 500, "count": 1}
    assert (await emulator.post("/_emulator/faults", json=fault)).status == 200
    statuses.append((await gateway.post("/v1/rerank", json={"query": f"{word} f", "documents": ["x"]})).status)
    return statuses


async def main() -> None:
    global recording
    emulator = TestClient(TestServer(create_emulator_app(EmulatorConfig(api_key=EMULATOR_KEY))))
    await emulator.start_server()
    raw = gateway_config(str(emulator.make_url("")).rstrip("/"),
                         providers={"deepinfra": {"budget": {"daily_usd": 100.0}}})
    gateway = TestClient(TestServer(create_app(parse_config(raw))))
    await gateway.start_server()
    try:
        sys.addaudithook(note)
        recording = True
        first = await requests(gateway, emulator, "first")
        again = await requests(gateway, emulator, "again")
        recording = False
    finally:
        await gateway.close()
        await emulator.close()
    print(orjson.dumps({"first": first, "again": again, "noted": noted}).decode())


if __name__ == "__main__":
    asyncio.run(main())
