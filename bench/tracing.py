"""What tracing costs a request: off (the default) against on, in one process, over real sockets.

    python -m bench run tracing               # ~20 s: rounds of off / on, ms per request and the ratio
    python -m bench run tracing -- --off-only    # the gateway as configured by default, for a before/after
                                                # run against another checkout (PYTHONPATH=that checkout)

The emulator and the gateway run in this process (memory cache); every request is the KB
server's call (1 query, 20 documents of ~400 characters) with a counter in it, so each one misses
the cache and makes one upstream call, the path the hooks are on. "on" exports to an exporter
that drops the spans, batched as in production, so the figure is the SDK's cost, not a
collector's. Also times the two hooks a request passes with tracing off, per call. It asserts
nothing: the machine is shared, so only ratios within one run mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from bench.micro import Micro
from bench.registry import Figures
from gateway.app import create_app
from gateway.config import parse_config
from gateway.emulator import EmulatorConfig, create_emulator_app

KEY = "bench-key"
DOCUMENT = ("Bankruptcy through the MFC is free for a citizen whose debts are between 25,000 and 1,000,000 rubles "
            "and whose enforcement proceedings were closed for want of property. ") * 2


def settings(emulator_url: str) -> Any:
    return parse_config({
        "server": {"default_model": "m"},
        "models": {"m": {"fallback": ["deepinfra"], "quality": {"probe_interval_seconds": 0}}},
        "providers": {"deepinfra": {"kind": "deepinfra", "base_url": emulator_url, "api_key_env": "BENCH_KEY",
                                    "model": "Qwen/Qwen3-Reranker-8B", "timeout_seconds": 10}},
    })


def tracing_on() -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from gateway.observability.tracing import Tracing

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    return Tracing.exporting_to(Drop())


async def round_ms(session: ClientSession, url: str, count: int, start: int) -> float:
    started = time.perf_counter()
    for n in range(start, start + count):
        body = {"queries": [f"how much does bankruptcy through the MFC cost? {n}"],
                "documents": [f"{DOCUMENT} {n}-{i}" for i in range(20)]}
        async with session.post(url, json=body) as response:
            await response.read()
            assert response.status == 200, response.status
    return (time.perf_counter() - started) * 1000 / count


async def serve(app: web.Application) -> TestServer:
    server = TestServer(app)
    await server.start_server()
    return server


def hook_seconds(micro: Micro) -> dict[str, float | None]:
    """Seconds per call of each hook a request passes with tracing off (None in a pyperf worker)."""
    from gateway.observability.tracing import Tracing, with_trace_context

    off, headers = Tracing.off(), {"Accept": "application/json"}

    def attempt() -> None:
        with off.attempt("p", 20) as span:
            span.tokens(0)

    return {"with_trace_context": micro.time("with_trace_context", lambda: with_trace_context(headers)),
            "attempt span (off)": micro.time("attempt_span_off", attempt)}


async def measure(rounds: int, count: int, off_only: bool, hooks: dict[str, float | None]) -> Figures:
    import os

    os.environ["BENCH_KEY"] = KEY
    emulator = await serve(create_emulator_app(EmulatorConfig(api_key=KEY)))
    config = settings(str(emulator.make_url("")).rstrip("/"))
    modes: dict[str, Any] = {"off": None} if off_only else {"off": None, "on": tracing_on()}
    servers = {mode: await serve(create_app(config, **({} if tracing is None else {"tracing": tracing})))
               for mode, tracing in modes.items()}
    results: dict[str, list[float]] = {mode: [] for mode in modes}
    n = 0
    async with ClientSession() as session:
        for server in servers.values():  # warm-up: connections, first-call costs
            await round_ms(session, str(server.make_url("/v1/inference/m")), 20, n)
            n += 20
        for _ in range(rounds):
            for mode, server in servers.items():
                results[mode].append(await round_ms(session, str(server.make_url("/v1/inference/m")), count, n))
                n += count
    for server in (*servers.values(), emulator):
        await server.close()
    print(f"{rounds} rounds x {count} requests per mode (miss path, one upstream call each), median ms/request:")
    medians = {mode: statistics.median(values) for mode, values in results.items()}
    for mode, median in medians.items():
        print(f"  tracing {mode:3}: {median:.3f} ms  (rounds: {', '.join(f'{v:.3f}' for v in results[mode])})")
    figures: Figures = {f"tracing_{mode}.ms_per_request": median for mode, median in medians.items()}
    if "on" in medians:
        print(f"  on / off: {medians['on'] / medians['off']:.3f}")
        figures["ratio.on_over_off"] = medians["on"] / medians["off"]
        for name, seconds in hooks.items():
            ns = (seconds or 0.0) * 1e9
            print(f"  hook with tracing off, {name}: {ns:.0f} ns per call = "
                  f"{ns / (medians['off'] * 1e6):.2e} of a request")
    return figures


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--off-only", action="store_true")


def main(argv: Sequence[str] | None = None) -> Figures:
    micro = Micro("tracing", argv, _options)  # the hooks on pyperf; its options too (-- --help)
    hooks = {} if micro.args.off_only else hook_seconds(micro)
    if micro.in_worker:
        return {}
    return micro.figures | asyncio.run(measure(micro.args.rounds, micro.args.count, micro.args.off_only, hooks))
