"""What a fleet pays: the KB replay from concurrent clients through 1 worker, 2 workers, 2 processes.

    python -m bench run fleet            # 2,000 requests per setup, about two minutes
    python -m bench run fleet --quick    # 400 requests per setup

The seeded KB-like stream of `cache_money.py` (`workload.KbReplay`), sent by 16 concurrent
clients against an emulator answering in 150 ms, with the score cache in a fresh private
Redis, three ways: (a) one gateway process (`serve --workers 1`), (b) one gateway with two
workers (`serve --workers 2`: the kernel spreads the clients' connections over them), and (c) two
gateway processes on one Redis, the clients split between them. Single flight inside one
process makes (a) pay each distinct pair once; in (b) and (c) two processes may miss the same
pair at once, and what they then pay shows whether they share the call through Redis.

Paid pairs are the emulator's own count of documents scored. It asserts nothing: it prints
paid ÷ distinct pairs per setup, latency, and whether every answer agreed with every other.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from bench.cache_money import workload_facts
from bench.harness import (
    HEADERS,
    ProcessGroup,
    Server,
    cache_warnings_note,
    client_session,
    exit_on_sigterm,
    fmt,
    markdown,
    percentile,
    redis_url,
    start_emulator,
    start_gateway,
    start_redis,
    write_gateway_config,
)
from bench.registry import Figures
from bench.workload import KbReplay

TARGET_RATIO = 1.02
SETUP_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Setup:
    label: str
    processes: int  # separate gateway processes, each `--workers 1` ...
    workers: int  # ... or one gateway with this many workers


SETUPS = (
    Setup("(a) 1 worker", processes=1, workers=1),
    Setup("(b) 2 workers (serve --workers 2)", processes=1, workers=2),
    Setup("(c) 2 processes, one Redis", processes=2, workers=1),
)


@dataclass
class Run:
    setup: Setup
    answers: int = 0
    errors: list[str] = field(default_factory=list)
    misses_in_headers: int = 0
    paid_pairs: int = 0  # the emulator's count
    upstream_calls: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    disagreements: int = 0  # scores differing from another answer's for the same pair
    warnings: list[str] = field(default_factory=list)


def run_setup(setup: Setup, bodies: Sequence[bytes], clients: int, latency_ms: float, cache_timeout_ms: float,
              reference: dict[tuple[str, str], float], workdir: Path) -> Run:
    with ProcessGroup(workdir) as group:
        redis = start_redis(group, None)
        emulator = start_emulator(group, None, latency_ms=latency_ms)
        config = write_gateway_config(workdir / "fleet.toml", emulator.port, redis_url(redis), cache_timeout_ms)
        gateways = [start_gateway(group, None, emulator, name=f"gateway-{i}", workers=setup.workers, config=config)
                    for i in range(setup.processes)]
        group.wait_ready()
        run = asyncio.run(asyncio.wait_for(_replay(setup, bodies, clients, gateways, emulator, reference),
                                           SETUP_TIMEOUT_S))
        run.warnings = [line for gateway in gateways for line in cache_warnings_note(gateway)]
    return run


async def _replay(setup: Setup, bodies: Sequence[bytes], clients: int, gateways: Sequence[Server],
                  emulator: Server, reference: dict[tuple[str, str], float]) -> Run:
    run = Run(setup)
    pending = iter(bodies)  # shared: each client takes the next unsent request, in replay order
    async with client_session() as session:

        async def client(gateway: Server) -> None:
            for body in pending:
                await _send(session, gateway, body, run, reference)

        started = time.perf_counter()
        await asyncio.gather(*(client(gateway) for gateway, _ in zip(itertools.cycle(gateways), range(clients))))
        run.seconds = time.perf_counter() - started
        async with session.get(emulator.url("/_emulator/stats")) as resp:
            stats = orjson.loads(await resp.read())
    run.paid_pairs = stats["documents"]["deepinfra"]
    run.upstream_calls = stats["requests"]["deepinfra"]
    return run


async def _send(session: aiohttp.ClientSession, gateway: Server, body: bytes, run: Run,
                reference: dict[tuple[str, str], float]) -> None:
    started = time.perf_counter()
    try:
        async with session.post(gateway.url(), data=body, headers=HEADERS) as resp:
            raw = await resp.read()
            cache_header = resp.headers.get("X-Rerank-Cache", "")
    except (TimeoutError, aiohttp.ClientError) as exc:
        run.errors.append(f"{type(exc).__name__}: {exc}")
        return
    if resp.status != 200:
        run.errors.append(f"HTTP {resp.status}: {raw[:200]!r}")
        return
    run.latencies_ms.append((time.perf_counter() - started) * 1000)
    run.answers += 1
    run.misses_in_headers += int(cache_header.rpartition("misses=")[2] or 0)
    request = orjson.loads(body)
    query = request["queries"][0]
    for document, score in zip(request["documents"], orjson.loads(raw)["scores"]):
        # The emulator is deterministic: every answer, in every setup, must give a pair one score.
        run.disagreements += reference.setdefault((query, document), score) != score


def render(runs: Sequence[Run], distinct_pairs: int) -> str:
    rows = [["setup", "answers", "errors", "paid pairs (emulator)", "Σ header misses", "upstream calls",
             "paid ÷ distinct", f"≤ {TARGET_RATIO}x", "p50 ms", "p99 ms", "req/s", "scores agree"]]
    for run in runs:
        ratio = run.paid_pairs / distinct_pairs
        rows.append([run.setup.label, f"{run.answers:,}", str(len(run.errors)), f"{run.paid_pairs:,}",
                     f"{run.misses_in_headers:,}", f"{run.upstream_calls:,}", f"{ratio:.3f}x",
                     "met" if ratio <= TARGET_RATIO else "missed", fmt(percentile(run.latencies_ms, 50), 1),
                     fmt(percentile(run.latencies_ms, 99), 1), fmt(run.answers / run.seconds, 1),
                     "yes" if run.disagreements == 0 else f"NO ({run.disagreements} scores differ)"])
    return markdown(rows)


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description="paid ÷ distinct pairs through 1 worker, 2 workers, 2 processes")
    parser.add_argument("--quick", action="store_true", help="400 requests per setup")
    parser.add_argument("--requests", type=int, default=None, help="requests per setup (default 2000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--latency-ms", type=float, default=150.0, help="emulated provider latency (default 150)")
    parser.add_argument("--cache-timeout-ms", type=float, default=1000.0,
                        help="the gateways' cache.timeout_ms (default 1000: a stall on a busy machine must not "
                             "skip the cache and charge pairs that were cached)")
    parser.add_argument("--seed", type=int, default=KbReplay.seed)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    requests = args.requests or (400 if args.quick else KbReplay.requests)
    replay = KbReplay(requests=requests, seed=args.seed)
    bodies = replay.bodies()
    pairs, distinct_pairs, distinct_queries = workload_facts(bodies)
    print(f"KB replay: {requests:,} requests (seed {replay.seed}), {distinct_queries} distinct queries, "
          f"{pairs:,} pairs, {distinct_pairs:,} distinct; {args.clients} concurrent clients; emulator latency "
          f"{args.latency_ms:g} ms; cache.timeout_ms {args.cache_timeout_ms:g}", flush=True)
    reference: dict[tuple[str, str], float] = {}
    runs = []
    with tempfile.TemporaryDirectory(prefix="fleet-replay-") as tmp:
        for number, setup in enumerate(SETUPS):
            workdir = Path(tmp) / str(number)
            workdir.mkdir()
            runs.append(run_setup(setup, bodies, args.clients, args.latency_ms, args.cache_timeout_ms,
                                  reference, workdir))
            print(f"  {setup.label}: {runs[-1].paid_pairs:,} paid pairs", file=sys.stderr, flush=True)
    print(render(runs, distinct_pairs))
    for run in runs:
        for line in run.errors[:3] + run.warnings:
            print(f"{run.setup.label}: {line}")
    figures: Figures = {"distinct_pairs": distinct_pairs}
    for key, run in zip("abc", runs):
        figures |= {f"{key}.paid_pairs": run.paid_pairs, f"{key}.paid_over_distinct": run.paid_pairs / distinct_pairs,
                    f"{key}.errors": len(run.errors), f"{key}.p50_ms": percentile(run.latencies_ms, 50),
                    f"{key}.req_per_s": run.answers / run.seconds, f"{key}.disagreements": run.disagreements}
    return figures
