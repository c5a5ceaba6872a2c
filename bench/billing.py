"""Billing, issue 16 items 1 and 2: what a TEI provider and a split request failing part-way pay.

    python -m bench run billing

Two runs against the emulator, in-process, memory cache and ledger (no Redis needed):

- TEI: one TEI provider at $1/M with a $0.01 daily budget, fresh 20-passage requests until the
  gateway refuses (at most 100). Printed: requests served, the tokens TEI's own tokenizer would
  bill (the emulator's count; TEI answers carry none), and what /admin/spend shows.
- split: DeepInfra with max_batch = 100, then Fireworks; a 1,000-passage request while one
  DeepInfra call fails (HTTP 500, once; no retries). Printed: DeepInfra's spend, the pairs each
  provider scored, and the same request again: its cache hits and misses and what it paid.

Prints figures only (shared machine: nothing is asserted). Runs on any commit that has
gateway.app.create_app and the emulator, so it gives before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from bench.registry import Figures
from gateway.app import create_app
from gateway.config import parse_config
from gateway.emulator import EmulatorConfig, create_emulator_app
from gateway.emulator.wire import Call

MODEL = "qwen3-reranker-8b"
KEY = "bench"
ADMIN = {"Authorization": "Bearer bench-admin"}
QUERY = "what does bankruptcy through the MFC cost"


def settings(emulator: str, fallback: list[str], providers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    common = {"base_url": emulator, "api_key_env": "BENCH_EMULATOR_KEY", "model": "Qwen/Qwen3-Reranker-8B"}
    return {
        "server": {"default_model": MODEL, "admin_key_env": "BENCH_ADMIN_KEY"},
        "models": {MODEL: {"fallback": fallback, "quality": {"probe_interval_seconds": 0}}},
        "providers": {name: {**common, **values} for name, values in providers.items()},
        "resilience": {"max_retries": 0},
    }


def passages(count: int, tag: str) -> list[str]:
    return [f"{tag} passage {i:05d} about the fees and costs of bankruptcy at the MFC" for i in range(count)]


async def client_of(app: Any) -> TestClient:
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def spend(gateway: TestClient, provider: str) -> dict[str, Any]:
    report = await (await gateway.get("/admin/spend", headers=ADMIN)).json()
    return report["providers"][provider]["today"]


async def documents(emulator: TestClient) -> dict[str, int]:
    return (await (await emulator.get("/_emulator/stats")).json())["documents"]


async def rerank(gateway: TestClient, docs: list[str]) -> Any:
    return await gateway.post("/v1/rerank", json={"model": MODEL, "query": QUERY, "documents": docs})


async def tei_run(emulator: TestClient, url: str) -> Figures:
    tei = {"kind": "tei", "price_per_million_tokens": 1.0, "budget": {"daily_usd": 0.01}}
    gateway = await client_of(create_app(parse_config(settings(url, ["tei"], {"tei": tei}))))
    served, tokens, status = 0, 0, 200
    try:
        for i in range(100):
            docs = passages(20, f"r{i}")
            response = await rerank(gateway, docs)
            status = response.status
            if status != 200:
                break
            served += 1
            tokens += Call([QUERY] * len(docs), docs).tokens()
        today = await spend(gateway, "tei")
    finally:
        await gateway.close()
    worth = tokens * 1.0 / 1e6
    print(f"TEI, $1/M, daily budget $0.01: served {served} requests (last status {status}); "
          f"TEI's own count {tokens} tokens = ${worth:.6f} ({worth / 0.01:.2f}x the budget); "
          f"/admin/spend: {today['tokens']} tokens, ${today['usd']:.6f}")
    return {"tei.served": served, "tei.tokens_billed": tokens, "tei.tokens_spent": today["tokens"]}


async def split_run(emulator: TestClient, url: str) -> Figures:
    providers = {
        "deepinfra": {"kind": "deepinfra", "price_per_million_tokens": 0.05, "max_batch": 100},
        "fireworks": {"kind": "fireworks", "model": "accounts/fireworks/models/qwen3-reranker-8b",
                      "price_per_million_tokens": 0.10},
    }
    gateway = await client_of(create_app(parse_config(settings(url, ["deepinfra", "fireworks"], providers))))
    docs = passages(1000, "split")
    per_call = Call([QUERY] * 100, docs[:100]).tokens()
    try:
        await emulator.post("/_emulator/faults", json={"provider": "deepinfra", "mode": "status", "status": 500,
                                                       "count": 1})
        first = await rerank(gateway, docs)
        after_first = await documents(emulator)
        paid = await spend(gateway, "deepinfra")
        print(f"split, 1,000 passages, max_batch 100, one DeepInfra call fails: status {first.status}, "
              f"provider {first.headers.get('X-Rerank-Provider')}")
        print(f"  DeepInfra spend {paid['tokens']} tokens ${paid['usd']:.8f} "
              f"(9 answered calls = {9 * per_call} tokens ${9 * per_call * 0.05 / 1e6:.8f}); "
              f"pairs scored: deepinfra {after_first['deepinfra']}, fireworks {after_first['fireworks']}")
        again = await rerank(gateway, docs)
        after_again = await documents(emulator)
        repaid = await spend(gateway, "deepinfra")
        print(f"  the same request again: {again.headers.get('X-Rerank-Cache')}, provider "
              f"{again.headers.get('X-Rerank-Provider')}; pairs scored deepinfra "
              f"+{after_again['deepinfra'] - after_first['deepinfra']}, fireworks "
              f"+{after_again['fireworks'] - after_first['fireworks']}; DeepInfra paid "
              f"+{repaid['tokens'] - paid['tokens']} tokens")
    finally:
        await gateway.close()
    return {"split.deepinfra_tokens": paid["tokens"], "split.deepinfra_pairs": after_first["deepinfra"],
            "split.fireworks_pairs": after_first["fireworks"],
            "split.again_deepinfra_tokens": repaid["tokens"] - paid["tokens"]}


async def run() -> Figures:
    os.environ.update(BENCH_EMULATOR_KEY=KEY, BENCH_ADMIN_KEY="bench-admin")
    os.environ.pop("REDIS_URL", None)
    emulator = await client_of(create_emulator_app(EmulatorConfig(api_key=KEY)))
    url = str(emulator.make_url("")).rstrip("/")
    try:
        figures = await tei_run(emulator, url)
        await emulator.post("/_emulator/reset")
        return figures | await split_run(emulator, url)
    finally:
        await emulator.close()


def main(argv: Sequence[str] | None = None) -> Figures:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)  # no options but --help
    return asyncio.run(run())
