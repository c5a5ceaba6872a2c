"""Score cache, table 1: what a fully cached request costs the gateway, against a real Redis.

Four targets take turns at each concurrency: the gateway answering a pool of distinct
requests whose every pair is in Redis ("hit"); a second gateway on the same Redis and the
same core, left at the default `cache.timeout_ms`, answering the same pool ("hit-default");
the first gateway with fresh pairs on every request, so it reads Redis, calls the emulator
and writes Redis ("miss"); and the minimal pass-through proxy forwarding the pool's requests
to the emulator ("passthrough").

Why two gateways: the cache bounds each Redis call by `cache.timeout_ms` as the gateway's
event loop sees it. A loaded loop can lag past that bound, the call "times out" and is answered
uncached (three in a row and the gateway leaves Redis alone for a second); the extra upstream
work keeps the loop lagging. The first gateway's generous bound measures what a hit costs; the
second shows what the default does under the same load.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.harness import (
    Cell,
    Pinning,
    ProcessGroup,
    ResponseCheck,
    Server,
    cache_header_is,
    cache_warnings_note,
    cell_figures,
    client_session,
    expect_cache_header,
    fill_cache,
    find_cell,
    fmt,
    markdown,
    measure_cell,
    needs_query_per_document,
    pooled_cpu_ms,
    preflight,
    redis_url,
    start_emulator,
    start_gateway,
    start_passthrough,
    start_redis,
    take_turns,
    verdict,
)
from bench.workload import DOCUMENTS_PER_REQUEST, FreshBodies
from gateway.config import CacheConfig  # importable from a checkout once harness is imported

TARGETS = ("hit", "hit-default", "miss", "passthrough")
LABELS = {"hit": "gateway, all pairs cached", "hit-default": "same, default cache.timeout_ms",
          "miss": "gateway, fresh pairs", "passthrough": "passthrough"}
DEFAULT_TIMEOUT_MS = CacheConfig().timeout_ms
HIT_HEADER = f"hits={DOCUMENTS_PER_REQUEST}; misses=0"
MISS_HEADER = f"hits=0; misses={DOCUMENTS_PER_REQUEST}"
HIT_P99_LIMIT_MS = 5.0
SECTION_TIMEOUT_S = 900.0
CLEAN_SHARE = 0.99  # a hit cell counts for the targets when this share came from the cache


@dataclass(frozen=True)
class HitPlan:
    concurrencies: list[int]
    requests: int  # measured per cell, over all its slices
    rounds: int
    pool: int  # distinct cached requests, cycled
    latency_ms: float
    cache_timeout_ms: float  # the measured gateway's; "hit-default" keeps the gateway's default


@dataclass
class _Servers:
    redis: Server
    emulator: Server
    passthrough: Server
    gateway: Server
    gateway_default: Server  # default cache.timeout_ms


@dataclass
class _Streams:
    """Endless body sources per target; the hit and passthrough ones cycle the cached pool."""

    hit: Iterator[bytes]
    miss: FreshBodies
    passthrough: Iterator[bytes]

    def take(self, target: str, count: int) -> list[bytes]:
        if target == "miss":
            return self.miss.bodies(count, broadcast=False)
        return list(itertools.islice(self.passthrough if target == "passthrough" else self.hit, count))


def run_hit_section(plan: HitPlan, pinning: Pinning, workdir: Path) -> tuple[str, dict[str, float]]:
    with ProcessGroup(workdir) as group:
        servers = _start(group, plan, pinning)
        cells = asyncio.run(asyncio.wait_for(_measure(plan, servers), SECTION_TIMEOUT_S))
        warnings = cache_warnings_note(servers.gateway) + cache_warnings_note(servers.gateway_default)
    text = "\n\n".join([render_table(cells), render_targets(cells), "\n".join(_notes(plan, cells) + warnings)])
    return text, cell_figures(cells)


def _start(group: ProcessGroup, plan: HitPlan, pinning: Pinning) -> _Servers:
    # Redis sits with the emulator on the harness side: the gateway's core stays its own.
    redis = start_redis(group, pinning.emulator)
    emulator = start_emulator(group, pinning.emulator, plan.latency_ms)
    passthrough = start_passthrough(group, pinning.proxy, emulator)
    gateway = start_gateway(group, pinning.proxy, emulator, redis_url(redis), plan.cache_timeout_ms)
    gateway_default = start_gateway(group, pinning.proxy, emulator, redis_url(redis), name="gateway-default")
    group.wait_ready()
    return _Servers(redis, emulator, passthrough, gateway, gateway_default)


async def _measure(plan: HitPlan, servers: _Servers) -> list[Cell]:
    async with client_session() as session:
        streams = await _prepare(session, plan, servers)
        cells: list[Cell] = []
        for concurrency in plan.concurrencies:
            cells.extend(await _measure_concurrency(session, plan, servers, streams, concurrency))
        return cells


async def _prepare(session: aiohttp.ClientSession, plan: HitPlan, servers: _Servers) -> _Streams:
    """Check every target answers, then fill the cache with the pool, every pair of it."""
    pool = FreshBodies(broadcast_query=False, label="h")
    gateway_pool = [pool.body_at(n, broadcast=False) for n in range(1, plan.pool + 1)]
    broadcast = await needs_query_per_document(session, servers.emulator, gateway_pool[0])
    passthrough_pool = [pool.body_at(n, broadcast) for n in range(1, plan.pool + 1)]
    miss = FreshBodies(broadcast_query=False, label="m")  # another label: never a pool pair
    await expect_cache_header(session, servers.gateway, miss.body(), DOCUMENTS_PER_REQUEST, MISS_HEADER)
    await preflight(session, servers.passthrough, passthrough_pool[0], DOCUMENTS_PER_REQUEST)
    # one Redis: filled for both gateways
    await fill_cache(session, servers.gateway, gateway_pool, hit=_HIT)
    return _Streams(itertools.cycle(gateway_pool), miss, itertools.cycle(passthrough_pool))


_HIT = cache_header_is(HIT_HEADER, provider="cache")  # nothing went upstream
_CHECKS: dict[str, ResponseCheck | None] = {
    "hit": _HIT,
    "hit-default": _HIT,
    "miss": cache_header_is(MISS_HEADER),
    "passthrough": None,
}


async def _measure_concurrency(session: aiohttp.ClientSession, plan: HitPlan, servers: _Servers,
                               streams: _Streams, concurrency: int) -> list[Cell]:
    per_round = max(1, plan.requests // plan.rounds)

    by_target = {"hit": servers.gateway, "hit-default": servers.gateway_default, "miss": servers.gateway,
                 "passthrough": servers.passthrough}

    async def measure_slice(target: str) -> Cell:
        server = by_target[target]
        warmup = streams.take(target, max(20, 2 * concurrency))
        return await measure_cell(session, target, server.url(), server, [servers.emulator, servers.redis],
                                  streams.take(target, per_round), warmup, concurrency, check=_CHECKS[target])

    return await take_turns(TARGETS, plan.rounds, measure_slice)


# --- reporting --------------------------------------------------------------------------

def render_table(cells: Sequence[Cell]) -> str:
    rows = [["path", "concurrency", "requests", "errors", "req/s", "p50 ms", "p99 ms",
             "proxy CPU ms/req", "Redis CPU ms/req", "proxy core %", "harness CPU %", "cache header as expected"]]
    for c in cells:
        harness = sum(c.other_cpu_s.values())  # emulator + Redis + load generator
        rows.append([LABELS[c.target], str(c.concurrency), str(c.requests), str(c.errors), f"{c.rps:.0f}",
                     fmt(c.percentile(50)), fmt(c.percentile(99)), fmt(c.cpu_ms_per_request, 3),
                     fmt(c.other_cpu_ms_per_request("redis"), 3),
                     fmt(100 * (c.server_cpu_s or 0.0) / c.seconds, 0), f"{100 * harness / c.seconds:.0f}",
                     "—" if _CHECKS[c.target] is None else f"{c.requests - c.unexpected}/{c.requests}"])
    return markdown(rows)


def _clean(cell: Cell) -> bool:
    return cell.requests > 0 and cell.unexpected <= (1 - CLEAN_SHARE) * cell.requests


def render_targets(cells: Sequence[Cell]) -> str:
    rows = [["target", "measured", "limit", "result"]]
    # A hit cell whose answers mostly went upstream measured the miss path: leave it out.
    clean_hits = [c for c in cells if c.target == "hit" and _clean(c)]
    hit_cpu = pooled_cpu_ms(clean_hits, "hit")
    pt_cpu, miss_cpu = pooled_cpu_ms(cells, "passthrough"), pooled_cpu_ms(cells, "miss")
    where = ", ".join(f"c={c.concurrency}" for c in clean_hits) or "none"
    rows.append([f"gateway CPU per fully cached request ÷ passthrough CPU per request (hit cells at {where})",
                 f"{hit_cpu / pt_cpu:.2f}x ({hit_cpu:.3f} vs {pt_cpu:.3f} ms)" if hit_cpu and pt_cpu else
                 "not measured: no hit cell was answered from the cache", "≤ 1x",
                 verdict(bool(hit_cpu and pt_cpu and hit_cpu <= pt_cpu))])
    if hit_cpu and miss_cpu:
        rows.append(["  gateway CPU, hit ÷ miss", f"{hit_cpu / miss_cpu:.2f}x ({hit_cpu:.3f} vs {miss_cpu:.3f} ms)",
                     "info", "—"])
    hit16 = find_cell(clean_hits, "hit", 16)
    if hit16:
        p99 = hit16.percentile(99)
        rows.append(["hit-path p99 at c=16", f"{p99:.2f} ms", f"< {HIT_P99_LIMIT_MS:g} ms",
                     verdict(p99 < HIT_P99_LIMIT_MS)])
        # A closed loop of 16 clients waits ~16/throughput per request: queueing, not work.
        rows.append(["  closed-loop floor at c=16: 16 ÷ hit req/s", f"{1000 * 16 / hit16.rps:.2f} ms", "info", "—"])
    return markdown(rows) if len(rows) > 1 else "(no target applies to the concurrencies run)"


def _notes(plan: HitPlan, cells: Sequence[Cell]) -> list[str]:
    unexpected = sum(c.unexpected for c in cells)
    checked = sum(c.requests for c in cells if _CHECKS[c.target] is not None)
    return [
        f"hit: a pool of {plan.pool} distinct requests (1 query + {DOCUMENTS_PER_REQUEST} documents each), sent "
        "until one whole pass came back from the cache, then cycled. Every measured gateway answer's "
        f"X-Rerank-Cache was checked: {checked - unexpected}/{checked} as expected.",
        f"miss: a counter makes every pair new: each request reads Redis, calls the emulator "
        f"({plan.latency_ms:g} ms) and writes Redis. passthrough: the pool's requests forwarded to the emulator.",
        "proxy CPU: the gateway's or the passthrough's utime+stime per request; Redis CPU: redis-server's; "
        "harness CPU %: emulator + Redis + load generator over wall time.",
        f"cache.timeout_ms: {plan.cache_timeout_ms:g} ms for the measured gateway (--cache-timeout-ms), the "
        f"default {DEFAULT_TIMEOUT_MS:g} ms for \"{LABELS['hit-default']}\", a second gateway on the same core and "
        "Redis. The bound is timed on the gateway's event loop, so a loaded loop's own lag counts against it; "
        "past it the call is answered uncached, and after three such failures in a row the gateway skips "
        "Redis for 1 s.",
    ]
