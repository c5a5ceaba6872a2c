"""`serve --workers`: hit-path and miss-path req/s with 1 and 2 workers on this machine.

    python -m bench run workers            # full run, about 3 minutes
    python -m bench run workers --quick    # smoke run, about 20 s

Two gateways run side by side on one config (Redis cache, the emulator as provider), one
started with `--workers 1`, the other with `--workers 2`, and take turns in slices so a stall
on a shared machine hits both alike. Hit path: a pool of distinct requests whose every pair is
in a private redis-server, cycled; every answer must say `X-Rerank-Cache: hits=20; misses=0`.
Miss path: fresh pairs on every request (Redis read, emulator call, Redis write).

Placement: on 2 CPUs the load generator, the emulator and Redis must run beside the gateway.
Two workers need both CPUs, so no gateway process is pinned, nor are the emulator and Redis:
everything competes, as it would on a 2-core host. The load generator runs unpinned too, and,
in a second set of rows, pinned to the last CPU. The printed header says what was done.

Gateway CPU is utime+stime from /proc: of the one process with `--workers 1` (which serves
in-process, no supervisor), of the supervisor's child processes summed with `--workers 2`.
It asserts nothing: only ratios within one run compare.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis

from bench.harness import (
    CLOCK_TICKS,
    Cell,
    CpuMeter,
    MachineCpu,
    ProcessGroup,
    ResponseCheck,
    Server,
    cache_header_is,
    cache_warnings_note,
    cell_figures,
    client_session,
    exit_on_sigterm,
    expect_cache_header,
    fill_cache,
    fmt,
    load_average,
    loadgen_cores,
    machine_cpus,
    markdown,
    measure_cell,
    redis_url,
    start_emulator,
    start_gateway,
    start_redis,
    take_turns,
    write_gateway_config,
)
from bench.registry import Figures
from bench.workload import DOCUMENT_CHARS, DOCUMENTS_PER_REQUEST, FreshBodies

HIT_HEADER = f"hits={DOCUMENTS_PER_REQUEST}; misses=0"
MISS_HEADER = f"hits=0; misses={DOCUMENTS_PER_REQUEST}"
CHECKS: dict[str, ResponseCheck] = {
    "hit": cache_header_is(HIT_HEADER, provider="cache"),  # nothing went upstream
    "miss": cache_header_is(MISS_HEADER),
}
PATH_LABELS = {"hit": "hit (all 20 pairs cached)", "miss": "miss (20 fresh pairs)"}
WORKER_COUNTS = (1, 2)
RUN_TIMEOUT_S = 1500.0
CLEAN_SHARE = 0.99  # a cell counts as its path when at least this share of answers had its header


@dataclass(frozen=True)
class Placement:
    name: str  # in the table's "load generator" column
    loadgen: set[int] | None  # None: not pinned


@dataclass(frozen=True)
class Target:
    path: str  # "hit" | "miss"
    workers: int
    placement: Placement

    @property
    def key(self) -> str:
        return f"{self.path} {self.workers}w lg:{self.placement.name}"


@dataclass(frozen=True)
class Plan:
    concurrencies: list[int]
    requests: int  # measured per cell, over all its slices
    rounds: int
    pool: int
    latency_ms: float
    cache_timeout_ms: float
    placements: list[Placement]


def parse_args(argv: Sequence[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description="hit and miss path with 1 and 2 gateway workers")
    parser.add_argument("--quick", action="store_true", help="short smoke run (400 requests per cell, 1 slice)")
    parser.add_argument("--requests", type=int, default=None,
                        help="measured requests per cell (default 6000; --quick 400)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="slices per cell, all cells taking turns (default 6; --quick 1)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64],
                        help="client connections, closed loop (default 64: saturates both paths)")
    parser.add_argument("--pool", type=int, default=500, help="distinct cached requests for the hit path")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="emulator latency (default 20)")
    parser.add_argument("--cache-timeout-ms", type=float, default=1000.0,
                        help="the gateways' cache.timeout_ms (default 1000, so event-loop lag on a saturated "
                             "machine does not switch the cache off and turn hits into misses)")
    parser.add_argument("--no-pinned-loadgen", dest="pinned", action="store_false",
                        help="skip the rows with the load generator pinned to one CPU")
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    placements = [Placement("not pinned", None)]
    if args.pinned and len(cpus) >= 2:
        placements.append(Placement(f"CPU {cpus[-1]}", {cpus[-1]}))
    return Plan(args.concurrency, args.requests or (400 if args.quick else 6000),
                max(1, args.rounds or (1 if args.quick else 6)), args.pool, args.latency_ms,
                args.cache_timeout_ms, placements)


# --- run --------------------------------------------------------------------------------

@dataclass
class _Servers:
    redis: Server
    emulator: Server
    gateways: dict[int, Server]  # by worker count


@dataclass
class _Streams:
    hit: Iterator[bytes]  # the cached pool, cycled
    miss: FreshBodies  # a counter: every pair new

    def take(self, path: str, count: int) -> list[bytes]:
        if path == "miss":
            return self.miss.bodies(count, broadcast=False)
        return list(itertools.islice(self.hit, count))


def start_servers(group: ProcessGroup, plan: Plan) -> _Servers:
    # Nothing pinned: two workers need both CPUs, and the emulator and Redis must run somewhere.
    redis_server = start_redis(group, None)
    emulator = start_emulator(group, None, plan.latency_ms)
    group.wait_ready()
    # One config file for both gateways: only --workers differs.
    config = write_gateway_config(group.workdir / "gateway.toml", emulator.port, redis_url(redis_server),
                                  plan.cache_timeout_ms)
    gateways = {n: start_gateway(group, None, emulator, name=f"gateway-{n}w", workers=n, config=config)
                for n in WORKER_COUNTS}
    group.wait_ready()  # for --workers 2: until each worker listens on the port itself
    return _Servers(redis_server, emulator, gateways)


async def run(plan: Plan, servers: _Servers) -> tuple[list[Cell], dict[int, list[int]]]:
    """The cells, and the connections each worker of each gateway held at the end."""
    async with client_session() as session:
        streams = await _prepare(session, plan, servers)
        targets = [Target(path, n, placement) for placement in plan.placements
                   for path in ("hit", "miss") for n in WORKER_COUNTS]
        cells: list[Cell] = []
        for concurrency in plan.concurrencies:
            cells.extend(await _measure_concurrency(session, plan, servers, streams, targets, concurrency))
        connections = {n: gw.connections_per_worker() for n, gw in servers.gateways.items()}
        return cells, connections


async def _prepare(session: aiohttp.ClientSession, plan: Plan, servers: _Servers) -> _Streams:
    pool_bodies = FreshBodies(broadcast_query=False, label="h")
    pool = [pool_bodies.body_at(n, broadcast=False) for n in range(1, plan.pool + 1)]
    miss = FreshBodies(broadcast_query=False, label="m")  # another label: never a pool pair
    for gateway in servers.gateways.values():
        await expect_cache_header(session, gateway, miss.body(), DOCUMENTS_PER_REQUEST, MISS_HEADER)
    # One Redis: filled through one gateway, then a whole pass through the other must hit too.
    await fill_cache(session, servers.gateways[1], pool, hit=CHECKS["hit"])
    await fill_cache(session, servers.gateways[2], pool, hit=CHECKS["hit"], passes=1, concurrency=8)
    return _Streams(itertools.cycle(pool), miss)


async def _measure_concurrency(session: aiohttp.ClientSession, plan: Plan, servers: _Servers, streams: _Streams,
                               targets: list[Target], concurrency: int) -> list[Cell]:
    per_round = max(1, plan.requests // plan.rounds)
    by_key = {t.key: t for t in targets}
    machine: list[CpuMeter] = [MachineCpu("machine"), MachineCpu("steal", "steal")]

    async def measure_slice(key: str) -> Cell:
        target = by_key[key]
        gateway = servers.gateways[target.workers]
        # Each worker's CPU is counted on its own too, to show how the kernel shared the load.
        others: list[CpuMeter] = [servers.emulator, servers.redis, *gateway.workers, *machine]
        warmup = streams.take(target.path, max(20, 2 * concurrency))
        with loadgen_cores(target.placement.loadgen):
            return await measure_cell(session, key, gateway.url(), gateway, others,
                                      streams.take(target.path, per_round), warmup, concurrency,
                                      check=CHECKS[target.path])

    return await take_turns([t.key for t in targets], plan.rounds, measure_slice)


# --- reporting --------------------------------------------------------------------------

def _ours_cpu_s(cell: Cell) -> float:
    """CPU of every process of the bench: gateway, emulator, Redis, load generator."""
    return (cell.server_cpu_s or 0.0) + sum(cell.other_cpu_s[name] for name in ("emulator", "redis", "loadgen"))


def _clean(cell: Cell) -> bool:
    return cell.requests > 0 and cell.unexpected <= (1 - CLEAN_SHARE) * cell.requests


def _split(cell: Cell, gateway: Server) -> str:
    if not gateway.workers:
        return "—"
    shares = [cell.other_cpu_s[w.name] for w in gateway.workers]
    total = sum(shares) or 1.0
    return "/".join(f"{100 * s / total:.0f}" for s in shares)


def render_table(cells: Sequence[Cell], targets: dict[str, Target], gateways: dict[int, Server]) -> str:
    cpus = machine_cpus()
    rows = [["path", "workers", "load generator", "c", "req/s", "÷ 1 worker", "p50 ms", "p99 ms",
             "gateway CPU ms/req", "worker CPU split %", "gateway CPU % of 1 core",
             "emulator + Redis CPU ms/req", "load gen CPU ms/req", f"{cpus} CPUs busy %: all / ours", "steal %",
             "cache header as expected", "errors"]]
    for c in cells:
        t = targets[c.target]
        one = next((o for o in cells if targets[o.target] == Target(t.path, 1, t.placement)
                    and o.concurrency == c.concurrency), None)
        ratio = "—" if t.workers == 1 or one is None else f"{c.rps / one.rps:.2f}x"
        capacity = cpus * c.seconds
        rows.append([
            PATH_LABELS[t.path], str(t.workers), t.placement.name, str(c.concurrency), f"{c.rps:.0f}", ratio,
            fmt(c.percentile(50)), fmt(c.percentile(99)), fmt(c.cpu_ms_per_request, 3),
            _split(c, gateways[t.workers]), f"{100 * (c.server_cpu_s or 0.0) / c.seconds:.0f}",
            fmt(c.other_cpu_ms_per_request("emulator") + c.other_cpu_ms_per_request("redis"), 3),
            fmt(c.other_cpu_ms_per_request("loadgen"), 3),
            f"{100 * c.other_cpu_s['machine'] / capacity:.0f} / {100 * _ours_cpu_s(c) / capacity:.0f}",
            f"{100 * c.other_cpu_s['steal'] / capacity:.1f}",
            f"{c.requests - c.unexpected}/{c.requests}", str(c.errors),
        ])
    return markdown(rows)


def render_ratios(cells: Sequence[Cell], targets: dict[str, Target]) -> str:
    """Per path and placement: 2 workers ÷ 1 worker, and what the machine could give at most."""
    cpus = machine_cpus()
    rows = [["path", "load generator", "c", "req/s 2w ÷ 1w", "p50 2w ÷ 1w", "p99 2w ÷ 1w",
             "gateway CPU/req 2w ÷ 1w", "all-process CPU ms/req 1w / 2w",
             f"req/s ÷ ceiling ({cpus} CPUs ÷ all-process CPU/req) 1w / 2w"]]
    for c2 in cells:
        t = targets[c2.target]
        if t.workers != 2:
            continue
        c1 = next((o for o in cells if targets[o.target] == Target(t.path, 1, t.placement)
                   and o.concurrency == c2.concurrency), None)
        if c1 is None or not c1.requests or not c2.requests:
            continue
        per_req = [1000 * _ours_cpu_s(c) / c.requests for c in (c1, c2)]
        ceiling = [c.rps / (cpus * 1000 / ms) for c, ms in zip((c1, c2), per_req)]
        rows.append([
            PATH_LABELS[t.path], t.placement.name, str(c2.concurrency), f"{c2.rps / c1.rps:.2f}x",
            f"{c2.percentile(50) / c1.percentile(50):.2f}x", f"{c2.percentile(99) / c1.percentile(99):.2f}x",
            f"{(c2.cpu_ms_per_request or 0.0) / (c1.cpu_ms_per_request or 1.0):.2f}x",
            f"{per_req[0]:.2f} / {per_req[1]:.2f}", f"{100 * ceiling[0]:.0f}% / {100 * ceiling[1]:.0f}%",
        ])
    return markdown(rows)


def _header(plan: Plan) -> str:
    placements = "; ".join(
        f"\"{p.name}\" = " + ("not pinned" if p.loadgen is None else f"pinned to CPU {min(p.loadgen)}")
        for p in plan.placements)
    return "\n".join([
        "rerank-gateway workers bench (issue: hit/miss req/s with 1 and 2 workers on this 2-core machine)",
        f"python {platform.python_version()}, aiohttp {aiohttp.__version__}, redis-py {redis.__version__}, "
        f"{os.cpu_count()} CPUs, clock tick {1000 / CLOCK_TICKS:g} ms",
        "placement: NO gateway process is pinned (2 workers need both CPUs), nor are the emulator and "
        "the private redis-server: all compete for both CPUs with the load generator, as on a 2-core host. "
        f"Load generator (this process, one event loop): {placements}.",
        "gateways: one config file (cache.url = private redis-server on a free port, "
        f"cache.timeout_ms = {plan.cache_timeout_ms:g}; provider = emulator, {plan.latency_ms:g} ms latency); "
        "`serve --workers 1` (one process) and `serve --workers 2` (supervisor + 2 workers, SO_REUSEPORT), "
        "both running the whole time, taking turns",
        f"requests: 1 query + {DOCUMENTS_PER_REQUEST} documents of ~{DOCUMENT_CHARS} chars; {plan.requests} measured "
        f"per cell in {plan.rounds} slice(s), all cells taking turns; hit pool {plan.pool} distinct requests",
        f"load average at start: {load_average()}",
    ])


def _notes(cells: Sequence[Cell], connections: dict[int, list[int]], gateways: dict[int, Server]) -> list[str]:
    dirty = [c for c in cells if not _clean(c)]
    split = "/".join(map(str, connections.get(2, []))) or "?"
    notes = [
        "gateway CPU: utime+stime per request from /proc: the one process with --workers 1; with --workers 2 the "
        "supervisor's two children summed (the supervisor, which only sleeps, not counted). worker CPU split: "
        f"each worker's share of that. The kernel hashes each new connection to a worker; keep-alive connections "
        f"stay there, and at the end the --workers 2 gateway's workers held {split} of the client's connections.",
        "CPUs busy: /proc/stat busy time over the wall time of the cell, all processes on the machine (other jobs "
        "included) / only the bench's own (gateway, emulator, Redis, load generator). steal: hypervisor steal.",
        "load generator pinned: it then shares its CPU with whatever the scheduler puts there (with 2 workers, "
        "one of them, which gets less CPU than its twin while still taking half the connections); not pinned: "
        "the scheduler moves it and everything else freely.",
        "ceiling: the req/s the machine could give if all its CPUs did nothing but this run's processes, at the "
        "measured CPU cost per request of all of them; near 100% means the machine, not the gateway, is the limit.",
        f"hit: every answer checked for X-Rerank-Cache: {HIT_HEADER} and X-Rerank-Provider: cache; miss: "
        f"X-Rerank-Cache: {MISS_HEADER} (Redis read, emulator call, Redis write).",
    ]
    if dirty:
        notes.append("NOT CLEAN (over 1% of answers without the expected cache header, so the cell partly "
                     "measured the other path): " + ", ".join(c.target for c in dirty))
    for gateway in gateways.values():
        notes += cache_warnings_note(gateway)
    return notes


def main(argv: Sequence[str] | None = None) -> Figures:
    plan = parse_args(argv)
    exit_on_sigterm()
    print(_header(plan), flush=True)
    targets = {Target(path, n, p).key: Target(path, n, p)
               for p in plan.placements for path in ("hit", "miss") for n in WORKER_COUNTS}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp, ProcessGroup(Path(tmp)) as group:
        servers = start_servers(group, plan)
        cells, connections = asyncio.run(asyncio.wait_for(run(plan, servers), RUN_TIMEOUT_S))
        notes = _notes(cells, connections, servers.gateways)
        table = render_table(cells, targets, servers.gateways)
    print()
    print(table)
    print()
    print(render_ratios(cells, targets))
    print()
    print("\n".join(notes))
    print(f"\nload average at end: {load_average()}")
    # Target keys hold spaces and colons ("hit 2w lg:CPU 1"): dots and underscores in the JSON.
    return {name.replace(" ", "_").replace("lg:", "loadgen_"): value for name, value in cell_figures(cells).items()}
