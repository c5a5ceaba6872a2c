"""The upstream HTTP client alone: CPU per provider call, aiohttp's ClientSession vs HttpTransport.

    python -m bench run transport                 # c=16 and c=64, 4 rounds, ~20 s
    python -m bench run transport --quick         # smoke run
    python -m bench run transport -- --requests 2000 --rounds 6

Both clients POST the KB call's upstream body (DeepInfra's form: the query once per document,
20 documents of ~400 characters, ~9 KB) to the emulator (`--latency-ms 0`, its own process on
another CPU), with the headers ProviderClient sends. **session** is ProviderClient's
`_session_post` as it was before HttpTransport (one ClientSession, TCPConnector(limit=64,
keepalive_timeout=30), a ClientTimeout per call); **transport** is `HttpTransport.post`, a
ClientSession again since issue 31 with the answer cap, the decoder and the replay on top: the
ratio is now what those add.
CPU per request is this process's `time.process_time()` over a slice of N requests, the two
taking turns for `--rounds` slices, so a stall on a shared machine hits both alike. Compare
the ratio and the difference within one run, never figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import aiohttp
import orjson

from bench.harness import BENCH_KEY, ProcessGroup, markdown, plan_pinning, start_emulator
from bench.registry import Figures
from bench.workload import FreshBodies
from gateway.providers.transport import HttpTransport, TransportSettings

MAX_CONNECTIONS = 64  # a provider's default max_connections
CLIENTS = ("session", "transport")
Post = Callable[[str, bytes, Mapping[str, str], aiohttp.ClientTimeout], Awaitable[tuple[int, bytes, str | None]]]
HEADERS = {"Content-Type": "application/json", "Accept": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}
TIMEOUT = aiohttp.ClientTimeout(total=10.0, sock_connect=2.0)


def session_post(session: aiohttp.ClientSession) -> Post:
    """ProviderClient._session_post before HttpTransport, line for line."""
    async def post(url: str, body: bytes, headers: Mapping[str, str], timeout: aiohttp.ClientTimeout
                   ) -> tuple[int, bytes, str | None]:
        async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
            return resp.status, await resp.read(), resp.headers.get("Retry-After")
    return post


async def run_slice(post: Post, url: str, bodies: list[bytes], concurrency: int) -> float:
    """CPU seconds this process spent on len(bodies) calls at `concurrency`."""
    feed = iter(bodies)

    async def worker() -> None:
        for body in feed:
            status, raw, _ = await post(url, body, HEADERS, TIMEOUT)
            if status != 200:
                raise RuntimeError(f"upstream answered {status}: {raw[:200]!r}")

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.process_time() - started


async def measure(url: str, concurrencies: list[int], requests: int, rounds: int) -> dict[tuple[str, int], list[float]]:
    bodies = FreshBodies(broadcast_query=True, label="t")
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=30)
    session = aiohttp.ClientSession(connector=connector, json_serialize=lambda v: orjson.dumps(v).decode())
    transport = HttpTransport(TransportSettings(MAX_CONNECTIONS, connect_timeout=2.0))
    posts = {"session": session_post(session), "transport": transport.post}
    cpu: dict[tuple[str, int], list[float]] = {}
    try:
        for concurrency in concurrencies:
            for name in CLIENTS:  # open the connections before anything is measured
                await run_slice(posts[name], url, bodies.bodies(concurrency * 4), concurrency)
            for _, name in itertools.product(range(rounds), CLIENTS):
                seconds = await run_slice(posts[name], url, bodies.bodies(requests), concurrency)
                cpu.setdefault((name, concurrency), []).append(seconds)
                print(f"  {name:<9} c={concurrency:<3} {1e6 * seconds / requests:7.1f} µs/request", file=sys.stderr)
    finally:
        await session.close()
        await transport.close()
    return cpu


def us_per_request(cpu: dict[tuple[str, int], list[float]], concurrency: int, requests: int) -> dict[str, float]:
    return {name: 1e6 * sum(cpu[name, concurrency]) / (requests * len(cpu[name, concurrency])) for name in CLIENTS}


def report(cpu: dict[tuple[str, int], list[float]], concurrencies: list[int], requests: int) -> str:
    rows = [["concurrency", "session µs/req", "transport µs/req", "saved µs/req", "transport ÷ session"]]
    for concurrency in concurrencies:
        per = us_per_request(cpu, concurrency, requests)
        rows.append([str(concurrency), f"{per['session']:.1f}", f"{per['transport']:.1f}",
                     f"{per['session'] - per['transport']:.1f}", f"{per['transport'] / per['session']:.2f}"])
    return markdown(rows)


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests per slice")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--quick", action="store_true", help="200 requests, 1 round")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rounds = 200, 1
    pinning = plan_pinning(not args.no_pin)
    with tempfile.TemporaryDirectory(prefix="bench-transport-") as workdir, ProcessGroup(Path(workdir)) as group:
        emulator = start_emulator(group, pinning.emulator, latency_ms=0)
        group.wait_ready()
        if pinning.proxy:  # the client is what is measured: it gets the CPU the gateway would have
            os.sched_setaffinity(0, pinning.proxy)
        cpu = asyncio.run(measure(emulator.url(), args.concurrency, args.requests, args.rounds))
    pinned = f"client on CPU {min(pinning.proxy)}, emulator on CPU {min(pinning.emulator or pinning.proxy)}" \
        if pinning.proxy else pinning.note
    print(f"{pinned}; {args.requests} requests x {args.rounds} rounds per cell\n")
    print(report(cpu, args.concurrency, args.requests))
    figures: Figures = {}
    for concurrency in args.concurrency:
        per = us_per_request(cpu, concurrency, args.requests)
        figures |= {f"{name}.c{concurrency}.cpu_us_per_request": us for name, us in per.items()}
        figures[f"cpu_ratio.transport_over_session.c{concurrency}"] = per["transport"] / per["session"]
    return figures
