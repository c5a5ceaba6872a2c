"""Long documents, issue 35: CPU and tokens of a 100-document request holding 10 long ones, chunk against truncate.

    python -m bench run long-documents [-- --requests 10 --long-chars 150000]

In-process against the emulator (memory cache, no Redis), one gateway per setting:

- shaping: CPU of gateway.scoring.shaping alone per request (the long documents cut or split),
  and per request of 100 short documents (the length check every request pays);
- miss: a fresh query each request: process CPU per request (gateway and emulator together, one
  process), pairs sent and tokens billed (the emulator's count, as DeepInfra bills them);
- hit: the same requests again: CPU per request, pairs sent (none expected).

Prints figures only (shared machine: nothing is asserted).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from bench.registry import Figures
from gateway.app import create_app
from gateway.config import ModelConfig, parse_config
from gateway.emulator import EmulatorConfig, create_emulator_app
from gateway.models import RerankRequest
from gateway.scoring.shaping import shape_documents

MODEL = "qwen3-reranker-8b"
KEY = "bench"
PATH = f"/v1/inference/{MODEL}"
MODES = ("truncate", "chunk")


def settings(emulator: str, mode: str) -> dict[str, Any]:
    return {
        "server": {"default_model": MODEL},
        "models": {MODEL: {"fallback": ["deepinfra"], "long_documents": mode, "quality": {"probe_interval_seconds": 0}}},
        "providers": {"deepinfra": {"kind": "deepinfra", "base_url": emulator, "api_key_env": "BENCH_EMULATOR_KEY",
                                    "model": "Qwen/Qwen3-Reranker-8B", "price_per_million_tokens": 0.05}},
    }


def documents(long_chars: int) -> list[str]:
    """100 documents, every tenth long: numbered words, so no two windows are the same text."""
    short = [f"passage {i:03d} about the fees and costs of bankruptcy at the MFC" for i in range(100)]
    for i in range(0, 100, 10):
        words = "".join(f"clause{i}-{j} of the procedure text " for j in range(long_chars // 20 + 1))
        short[i] = f"document {i}: " + words[:long_chars] + " bankruptcy through the MFC costs nothing"
    return short


async def client_of(app: Any) -> TestClient:
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def emulator_stats(emulator: TestClient) -> dict[str, Any]:
    return await (await emulator.get("/_emulator/stats")).json()


async def run_mode(emulator: TestClient, url: str, mode: str, docs: list[str], requests: int) -> Figures:
    gateway = await client_of(create_app(parse_config(settings(url, mode))))
    try:
        await emulator.post("/_emulator/reset")
        queries = [f"what does bankruptcy through the MFC cost, case {i}" for i in range(requests)]
        figures: Figures = {}
        for phase in ("miss", "hit"):
            before = await emulator_stats(emulator)
            started = time.process_time()
            for query in queries:
                response = await gateway.post(PATH, json={"queries": [query], "documents": docs})
                if response.status != 200:
                    raise RuntimeError(f"{mode} {phase}: HTTP {response.status}: {await response.text()}")
                await response.read()
            cpu_ms = (time.process_time() - started) * 1000 / requests
            after = await emulator_stats(emulator)
            figures[f"{mode}.{phase}.cpu_ms_per_request"] = cpu_ms
            figures[f"{mode}.{phase}.pairs_per_request"] = (after["documents"]["deepinfra"]
                                                            - before["documents"]["deepinfra"]) / requests
            figures[f"{mode}.{phase}.tokens_per_request"] = (after["tokens"]["deepinfra"]
                                                             - before["tokens"]["deepinfra"]) / requests
        return figures
    finally:
        await gateway.close()


def shaping_cpu_us(docs: list[str], mode: str, repeats: int) -> float:
    """CPU of shape_documents alone per request, in µs."""
    settings_ = ModelConfig(fallback=["deepinfra"], long_documents=mode)  # type: ignore[arg-type]  # one of MODES
    request = RerankRequest(queries=("what does bankruptcy through the MFC cost",) * len(docs), documents=tuple(docs))
    started = time.process_time()
    for _ in range(repeats):
        shape_documents(request, MODEL, settings_)
    return (time.process_time() - started) * 1e6 / repeats


async def measure(requests: int, long_chars: int) -> Figures:
    os.environ["BENCH_EMULATOR_KEY"] = KEY
    emulator = await client_of(create_emulator_app(EmulatorConfig(api_key=KEY)))
    url = f"http://127.0.0.1:{emulator.port}"
    docs = documents(long_chars)
    figures: Figures = {"short.shaping_us_per_request": shaping_cpu_us(documents(0)[:100], "truncate", 2000)}
    try:
        for mode in MODES:
            figures[f"{mode}.shaping_us_per_request"] = shaping_cpu_us(docs, mode, 50)
            figures.update(await run_mode(emulator, url, mode, docs, requests))
    finally:
        await emulator.close()
    return figures


def print_table(figures: Figures, requests: int, long_chars: int) -> None:
    print(f"100 documents, 10 of {long_chars:,} characters; {requests} requests per phase; "
          "CPU is this one process (gateway and emulator)")
    print(f"{'':10} {'shaping µs':>11} {'miss ms CPU':>12} {'miss pairs':>11} {'miss tokens':>12} "
          f"{'hit ms CPU':>11} {'hit pairs':>10}")
    for mode in MODES:
        print(f"{mode:10} {figures[f'{mode}.shaping_us_per_request']:11.1f} "
              f"{figures[f'{mode}.miss.cpu_ms_per_request']:12.2f} {figures[f'{mode}.miss.pairs_per_request']:11.1f} "
              f"{figures[f'{mode}.miss.tokens_per_request']:12.0f} {figures[f'{mode}.hit.cpu_ms_per_request']:11.2f} "
              f"{figures[f'{mode}.hit.pairs_per_request']:10.1f}")
    print(f"100 short documents: shaping (the length check) {figures['short.shaping_us_per_request']:.2f} µs per request")


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(prog="bench run long-documents", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10, help="requests per phase (miss, then hit)")
    parser.add_argument("--long-chars", type=int, default=150_000, help="characters of each long document")
    parser.add_argument("--quick", action="store_true", help="3 requests per phase")
    args = parser.parse_args(argv)
    requests = 3 if args.quick else args.requests
    figures = asyncio.run(measure(requests, args.long_chars))
    print_table(figures, requests, args.long_chars)
    return figures
