"""What keeping the last hour for /status costs a request.

    python -m bench run history

Times on pyperf (bench/micro.py), what the request path now does for the history: the edge's one
`record_request` (outcome, pairs looked up, one provider answer) and the guarded call's one
`record_spend`, on a MinuteHistory with a full hour of three providers in it. Beside it, the
whole request path in the same process: a cache hit and a miss (the emulator answering, in this
process too) sent over a real socket with aiohttp, CPU per request including the client's and
the emulator's work. The ratio is the history's share of that. It asserts nothing; then it times
building the view /status draws (once per page load, not per request).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence

from aiohttp.test_utils import TestClient, TestServer

from bench.micro import Micro
from bench.registry import Figures
from gateway.app import create_app
from gateway.config import parse_config
from gateway.emulator.app import create_emulator_app
from gateway.observability.history import MINUTES, MinuteHistory

REQUESTS = 400
DOCUMENTS = [f"passage {i} about the MFC opening hours and state fees in Kazan" for i in range(20)]


def full_history() -> MinuteHistory:
    clock = [time.time() - MINUTES * 60]
    history = MinuteHistory(lambda: clock[0])
    for _ in range(MINUTES):
        for provider in ("deepinfra", "fireworks", "cohere"):
            history.record_request("provider", 10, 10, [(provider, 0.05)])
            history.record_spend(provider, 0.00001)
        clock[0] += 60
    history.clock = time.time
    return history


def one_request(history: MinuteHistory) -> Callable[[], None]:
    """What the request path does for the history: the edge's record_request, the call's record_spend."""
    answers = [("deepinfra", 0.042)]

    def record() -> None:
        history.record_request("provider", 12, 8, ((p, s) for p, s in answers))
        history.record_spend("deepinfra", 0.0000123)

    return record


async def request_path_us(cached: bool) -> float:
    emulator = TestServer(create_emulator_app())
    await emulator.start_server()
    os.environ["BENCH_KEY"] = "k"
    config = parse_config({
        "models": {"qwen3-reranker-8b": {"fallback": ["deepinfra"], "aliases": ["Qwen/Qwen3-Reranker-8B"],
                                         "quality": {"probe_interval_seconds": 0}}},
        "providers": {"deepinfra": {"kind": "deepinfra", "model": "Qwen/Qwen3-Reranker-8B", "api_key_env": "BENCH_KEY",
                                    "base_url": str(emulator.make_url("")).rstrip("/")}},
    })
    client = TestClient(TestServer(create_app(config)))
    await client.start_server()
    try:
        async def send(i: int) -> None:
            query = "mfc hours" if cached else f"mfc hours {i}"
            body = {"queries": [query], "documents": DOCUMENTS}
            response = await client.post("/v1/inference/Qwen/Qwen3-Reranker-8B", json=body)
            assert response.status == 200, await response.text()
            await response.read()

        for i in range(50):  # warm up (and fill the cache for the hit path)
            await send(-1 - i if not cached else 0)
        started = time.process_time()
        for i in range(REQUESTS):
            await send(i)
        return (time.process_time() - started) / REQUESTS * 1e6
    finally:
        await client.close()
        await emulator.close()


def main(argv: Sequence[str] | None = None) -> Figures:
    micro = Micro("history", argv)
    history = full_history()
    record_s = micro.time("record_request_and_spend", one_request(history))
    view_s = micro.time("view", history.view)
    if micro.in_worker or record_s is None or view_s is None:
        return {}  # a pyperf worker: it ran its one task above
    record, view_ms = record_s * 1e6, view_s * 1000
    hit = asyncio.run(request_path_us(cached=True))
    miss = asyncio.run(request_path_us(cached=False))
    print("| per request | µs | history's share |")
    print("|---|---|---|")
    print(f"| history: record_request + record_spend | {record:.2f} | |")
    print(f"| cache hit, whole path in process (client, gateway) | {hit:.0f} | {record / hit:.2%} |")
    print(f"| miss, whole path in process (client, gateway, emulator) | {miss:.0f} | {record / miss:.2%} |")
    print(f"\nBuilding the hour's view for /status or /status.json (3 providers, 60 minutes): {view_ms:.2f} ms")
    return micro.figures | {"hit_cpu_us_per_request": hit, "miss_cpu_us_per_request": miss}
