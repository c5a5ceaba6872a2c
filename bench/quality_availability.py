"""What the quality guard costs in availability and in probe calls; prints, asserts nothing.

    python -m bench run quality-availability -- [--requests 50] [--reloads 20]

In one process, on loopback: the emulator and one gateway (no Redis), probes on. Three cases:

    template   the only provider fails its canary (the emulator's `template` fault: a noisy
               but real ranker): how many requests are answered, how many flagged, /readyz
    random     the only provider answers random scores: the same figures
    reloads    two healthy providers, N reloads that change no provider: the upstream calls
               the probes made after start

Run it on an older checkout to compare (PYTHONPATH=that checkout python bench/...): it only uses
create_app, the emulator and the HTTP endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.registry import Figures
from gateway.app import create_app
from gateway.config import load_config
from gateway.emulator import EmulatorConfig, create_emulator_app

MODEL = "qwen3-reranker-8b"


def config_text(emulator_port: int, fallback: str, extra: str = "") -> str:
    provider = """
[providers.{name}]
kind = "{name}"
base_url = "http://127.0.0.1:{port}"
model = "{model}"
api_key_env = "BENCH_KEY"
"""
    return f"""
[server]
default_model = "{MODEL}"
reload_poll_seconds = 0

[models."{MODEL}"]
fallback = {fallback}
quality = {{ probe_interval_seconds = 3600 }}
{provider.format(name="deepinfra", port=emulator_port, model="Qwen/Qwen3-Reranker-8B")}
{provider.format(name="fireworks", port=emulator_port, model="accounts/fireworks/models/qwen3-reranker-8b")}
{extra}
"""


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


async def emulator_calls(session: aiohttp.ClientSession, port: int) -> int:
    async with session.get(f"http://127.0.0.1:{port}/_emulator/stats") as response:
        return sum((await response.json())["requests"].values())


async def wait_for_verdict(session: aiohttp.ClientSession, port: int, providers: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
            body = await response.json()
        quality = body.get("quality", {}).get(MODEL, {})
        if all(quality.get(p, {}).get("state", "unknown") != "unknown" for p in providers):
            return body
        await asyncio.sleep(0.05)
    raise TimeoutError("no canary verdict within 30 s")


async def one_failing_provider(mode: str, requests: int, tmp: Path) -> None:
    emulator, emulator_port = await serve(create_emulator_app(EmulatorConfig()))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{emulator_port}/_emulator/faults",
                                json={"provider": "deepinfra", "mode": mode}) as response:
            assert response.status == 200
        path = tmp / f"{mode}.toml"
        path.write_text(config_text(emulator_port, '["deepinfra"]'))
        gateway, port = await serve(create_app(load_config(path), config_path=path))
        await wait_for_verdict(session, port, ("deepinfra",))
        statuses: dict[int, int] = {}
        flagged = 0
        for i in range(requests):
            body = {"query": f"bankruptcy through the MFC, question {i}", "documents": ["MFC bankruptcy costs nothing",
                                                                                      f"weather in Kazan {i}"]}
            async with session.post(f"http://127.0.0.1:{port}/v1/rerank", json=body) as response:
                statuses[response.status] = statuses.get(response.status, 0) + 1
                flagged += response.headers.get("X-Rerank-Quality") == "failing"
        async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
            ready = response.status
            warnings = len((await response.json()).get("warnings", []))
        print(f"| {mode} | {requests} | {statuses.get(200, 0)} | {flagged} | "
              f"{', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()))} | {ready} | {warnings} |")
        await gateway.cleanup()
    await emulator.cleanup()


async def reload_probes(reloads: int, tmp: Path) -> None:
    emulator, emulator_port = await serve(create_emulator_app(EmulatorConfig()))
    os.environ["BENCH_ADMIN_KEY"] = "bench"
    path = tmp / "reloads.toml"
    text = config_text(emulator_port, '["deepinfra", "fireworks"]').replace(
        "reload_poll_seconds = 0", 'reload_poll_seconds = 0\nadmin_key_env = "BENCH_ADMIN_KEY"')
    path.write_text(text)
    gateway, port = await serve(create_app(load_config(path), config_path=path))
    admin = {"Authorization": "Bearer bench"}
    async with aiohttp.ClientSession() as session:
        await wait_for_verdict(session, port, ("deepinfra", "fireworks"))
        calls = await _settled_calls(session, emulator_port)
        for i in range(reloads):
            path.write_text(text + f"\n[resilience]\nmax_retries = {1 + i % 2}\n")  # no provider changes
            async with session.post(f"http://127.0.0.1:{port}/admin/reload", headers=admin) as response:
                assert response.status == 200, await response.text()
        after = await _settled_calls(session, emulator_port)
        print(f"| {reloads} reloads, no provider changed | {after - calls} upstream calls by probes after start "
              f"(start: {calls}) |")
    await gateway.cleanup()
    await emulator.cleanup()


async def _settled_calls(session: aiohttp.ClientSession, emulator_port: int) -> int:
    """The emulator's request count once it has not moved for a second (probes run in the background)."""
    last, since = await emulator_calls(session, emulator_port), time.monotonic()
    while time.monotonic() - since < 1.0:
        await asyncio.sleep(0.1)
        now = await emulator_calls(session, emulator_port)
        if now != last:
            last, since = now, time.monotonic()
    return last


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--reloads", type=int, default=20)
    args = parser.parse_args(argv)
    asyncio.run(run(args.requests, args.reloads))
    return {}  # the figures are the printed table's: whether a failing canary is flagged, not a measure


async def run(requests: int, reloads: int) -> None:
    os.environ.setdefault("BENCH_KEY", "bench")
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        print("| only provider | requests | answered 200 | flagged failing | statuses | /readyz | warnings |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for mode in ("template", "random"):
            await one_failing_provider(mode, requests, tmp)
        print()
        await reload_probes(reloads, tmp)
