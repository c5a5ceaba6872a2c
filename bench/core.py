"""Core overhead benchmark: direct to the emulator vs a minimal pass-through vs the gateway.

    python -m bench run core            # full run (a couple of minutes)
    python -m bench run core --quick    # smoke run
    python -m bench run core -- --baseline /tmp/before   # and the gateway of another checkout, taking turns

Prints a Markdown table and the three target ratios. It asserts nothing: the machine is
shared and noisy, so only ratios measured within one run mean anything.

Every request is the knowledge-base server's real call (1 query of ~12 words, 20 documents
of ~400 characters) with a counter in the query and in every document, so the gateway never
answers from its score cache: the miss path, with a real upstream call, is what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.harness import (
    CLOCK_TICKS,
    Cell,
    Pinning,
    ProcessGroup,
    Server,
    cell_figures,
    client_session,
    find_cell,
    fmt,
    markdown,
    measure_cell,
    needs_query_per_document,
    pooled_cpu_ms,
    preflight,
    settle_in,
    start_emulator,
    start_gateway,
    start_passthrough,
    take_turns,
    verdict,
)
from bench.registry import Figures
from bench.workload import DOCUMENT_CHARS, DOCUMENTS_PER_REQUEST, QUERY_WORDS, FreshBodies

TARGETS = ("direct", "passthrough", "gateway")
BASELINE = "baseline"  # the gateway of another checkout (`--baseline`): before/after in one run
# Issue 17: the miss path's CPU per request at most this many times the pass-through's, at c=16
# and at c=64 each (aim 1.5x), and flat or falling as concurrency grows.
CPU_RATIO_LIMIT = 1.6


# --- reporting --------------------------------------------------------------------------

def _harness_cpu_s(cell: Cell) -> float:
    return cell.other_cpu_s["emulator"] + cell.other_cpu_s["loadgen"]


def render_table(cells: Sequence[Cell]) -> str:
    direct_p50 = {c.concurrency: c.percentile(50) for c in cells if c.target == "direct"}
    rows = [["target", "concurrency", "requests", "errors", "req/s", "p50 ms", "p99 ms",
             "added p50 ms", "CPU ms/req", "server core %", "harness CPU %"]]
    for c in cells:
        added = None if c.target == "direct" else c.percentile(50) - direct_p50.get(c.concurrency, float("nan"))
        busy = None if c.server_cpu_s is None else 100 * c.server_cpu_s / c.seconds
        rows.append([c.target, str(c.concurrency), str(c.requests), str(c.errors), f"{c.rps:.0f}",
                     fmt(c.percentile(50)), fmt(c.percentile(99)), fmt(added),
                     fmt(c.cpu_ms_per_request, 3), fmt(busy, 0),
                     f"{100 * _harness_cpu_s(c) / c.seconds:.0f}"])
    return markdown(rows)


def render_summary(cells: Sequence[Cell]) -> str:
    rows = [["target", "measured", "limit", "result"]]
    rows += _cpu_rows(cells) + _throughput_rows(cells) + _latency_rows(cells)
    return markdown(rows) if len(rows) > 1 else "(no target applies to the concurrencies run)"


def _cpu_rows(cells: Sequence[Cell]) -> list[list[str]]:
    rows = []
    for gateway in ("gateway", BASELINE):
        for concurrency in sorted({c.concurrency for c in cells}):
            mine, floor = find_cell(cells, gateway, concurrency), find_cell(cells, "passthrough", concurrency)
            if not (mine and floor and mine.cpu_ms_per_request and floor.cpu_ms_per_request):
                continue
            ratio = mine.cpu_ms_per_request / floor.cpu_ms_per_request
            limited = gateway == "gateway" and concurrency in (16, 64)
            rows.append([f"{gateway} CPU/req ÷ passthrough CPU/req at c={concurrency}",
                         f"{ratio:.2f}x ({mine.cpu_ms_per_request:.3f} vs {floor.cpu_ms_per_request:.3f} ms)",
                         f"≤ {CPU_RATIO_LIMIT}x" if limited else "info",
                         verdict(ratio <= CPU_RATIO_LIMIT) if limited else "—"])
    gw_cpu, pt_cpu = pooled_cpu_ms(cells, "gateway"), pooled_cpu_ms(cells, "passthrough")
    if gw_cpu and pt_cpu:
        rows.append(["gateway CPU/req ÷ passthrough CPU/req (all cells pooled)",
                     f"{gw_cpu / pt_cpu:.2f}x ({gw_cpu:.3f} vs {pt_cpu:.3f} ms)", "info", "—"])
    base_cpu = pooled_cpu_ms(cells, BASELINE)
    if gw_cpu and base_cpu:
        rows.append(["gateway CPU/req ÷ baseline CPU/req (all cells pooled)",
                     f"{gw_cpu / base_cpu:.2f}x ({gw_cpu:.3f} vs {base_cpu:.3f} ms)", "info", "—"])
    return rows


def _throughput_rows(cells: Sequence[Cell]) -> list[list[str]]:
    gateway, passthrough = find_cell(cells, "gateway", 64), find_cell(cells, "passthrough", 64)
    if not (gateway and passthrough):
        return []
    share = gateway.rps / passthrough.rps
    rows = [["gateway req/s ÷ passthrough req/s at c=64",
             f"{100 * share:.1f}% ({gateway.rps:.0f} vs {passthrough.rps:.0f})", "≥ 85%", verdict(share >= 0.85)]]
    gw_cpu, pt_cpu = pooled_cpu_ms(cells, "gateway"), pooled_cpu_ms(cells, "passthrough")
    if gw_cpu and pt_cpu:
        # req/s compares the proxies only when their own core is the bottleneck; the CPU
        # cost says what each would reach on a core of its own.
        busy = 100 * (gateway.server_cpu_s or 0.0) / gateway.seconds
        rows.append(["  one-core ceiling implied by CPU/req (gateway ÷ passthrough)",
                     f"{100 * pt_cpu / gw_cpu:.0f}% ({1000 / gw_cpu:.0f} vs {1000 / pt_cpu:.0f} req/s); "
                     f"gateway core busy {busy:.0f}% at c=64", "info", "—"])
    return rows


def _latency_rows(cells: Sequence[Cell]) -> list[list[str]]:
    gateway, direct = find_cell(cells, "gateway", 16), find_cell(cells, "direct", 16)
    if not (gateway and direct):
        return []
    added = gateway.percentile(50) - direct.percentile(50)
    return [["gateway p50 added over direct at c=16", f"{added:.2f} ms", "≤ 1.5 ms", verdict(added <= 1.5)]]


# --- run --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    concurrencies: list[int]
    requests: dict[int, int]
    latency_ms: float
    jitter_ms: float
    pin: bool
    rounds: int
    baseline: Path | None = None

    @property
    def targets(self) -> tuple[str, ...]:
        return (*TARGETS, BASELINE) if self.baseline else TARGETS


def parse_args(argv: Sequence[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description="direct vs pass-through vs gateway, as ratios in one run")
    parser.add_argument("--requests", type=int, default=None,
                        help="measured requests per cell at c>1 (default 2000; c=1 gets a fifth)")
    parser.add_argument("--quick", action="store_true", help="short smoke run (200 per cell)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="emulator latency (default 20)")
    parser.add_argument("--jitter-ms", type=float, default=0.0,
                        help="uniform extra emulator latency; breaks the lockstep bursts (default 0)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=None,
                        help="slices per cell, targets taking turns (default 4; --quick: 1)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout (e.g. `git worktree add /tmp/before HEAD~1`): its gateway "
                             "is measured too, on the same core, taking turns with this one")
    args = parser.parse_args(argv)
    per_cell = args.requests or (200 if args.quick else 2000)
    # c=1 runs at ~1/latency req/s, so a fifth as many requests keeps its cells short
    requests = {c: max(20, per_cell // 5) if c == 1 else per_cell for c in args.concurrency}
    rounds = max(1, args.rounds or (1 if args.quick else 4))
    return Plan(args.concurrency, requests, args.latency_ms, args.jitter_ms, args.pin, rounds, args.baseline)


def start_servers(group: ProcessGroup, plan: Plan, pinning: Pinning) -> dict[str, Server]:
    """The three targets by name; "direct" is the emulator itself."""
    emulator = start_emulator(group, pinning.emulator, plan.latency_ms, plan.jitter_ms)
    servers = {
        "direct": emulator,
        "passthrough": start_passthrough(group, pinning.proxy, emulator),
        "gateway": start_gateway(group, pinning.proxy, emulator),
    }
    if plan.baseline is not None:
        servers[BASELINE] = start_gateway(group, pinning.proxy, emulator, name=BASELINE,
                                          checkout=plan.baseline.resolve())
    group.wait_ready()
    return servers


async def run(plan: Plan, servers: dict[str, Server]) -> list[Cell]:
    async with client_session() as session:
        workload = FreshBodies(broadcast_query=False)
        workload.broadcast_query = await needs_query_per_document(session, servers["direct"], workload.body())
        print(_body_note(workload), flush=True)
        for target in plan.targets:
            headers = await preflight(session, servers[target], _body_for(workload, target), DOCUMENTS_PER_REQUEST)
            cache_header = headers.get("X-Rerank-Cache", "")
            if target in ("gateway", BASELINE) and f"misses={DOCUMENTS_PER_REQUEST}" not in cache_header:
                raise RuntimeError(f"gateway: a fresh request should miss the cache; X-Rerank-Cache: {cache_header!r}")
        cells = []
        for concurrency in plan.concurrencies:
            cells.extend(await measure_concurrency(session, servers, workload, plan, concurrency))
        return cells


async def measure_concurrency(session: aiohttp.ClientSession, servers: dict[str, Server],
                              workload: FreshBodies, plan: Plan, concurrency: int) -> list[Cell]:
    per_round = max(1, plan.requests[concurrency] // plan.rounds)

    async def measure_slice(target: str) -> Cell:
        warmup = _bodies_for(workload, target, max(20, 2 * concurrency))
        bodies = _bodies_for(workload, target, per_round)
        measured = None if target == "direct" else servers[target]
        return await measure_cell(session, target, servers[target].url(), measured, [servers["direct"]],
                                  bodies, warmup, concurrency)

    return await take_turns(plan.targets, plan.rounds, measure_slice)


def _body_for(workload: FreshBodies, target: str) -> bytes:
    # The gateway always gets the KB server's real call: one query for all documents.
    return workload.body(broadcast=False if target in ("gateway", BASELINE) else None)


def _bodies_for(workload: FreshBodies, target: str, count: int) -> list[bytes]:
    return workload.bodies(count, broadcast=False if target in ("gateway", BASELINE) else None)


def _body_note(workload: FreshBodies) -> str:
    size = len(workload.body(broadcast=False))
    if not workload.broadcast_query:
        return f"body: 1 query + {DOCUMENTS_PER_REQUEST} documents ({size} bytes) for all three targets"
    return (f"body: gateway gets 1 query + {DOCUMENTS_PER_REQUEST} documents ({size} bytes); the emulator "
            f"rejects a single query for {DOCUMENTS_PER_REQUEST} documents, so direct and passthrough send "
            f"the query once per document ({len(workload.body())} bytes), exactly what the gateway sends upstream")


def _header(plan: Plan, pinning: Pinning) -> str:
    return "\n".join([
        f"rerank-gateway core bench: emulator latency {plan.latency_ms:g} ms"
        + (f" + up to {plan.jitter_ms:g} ms jitter" if plan.jitter_ms else "") + f"; {QUERY_WORDS}-word query, "
        f"{DOCUMENTS_PER_REQUEST} documents of ~{DOCUMENT_CHARS} chars; every request fresh (cache misses)",
        f"python {platform.python_version()}, aiohttp {aiohttp.__version__}, {os.cpu_count()} CPUs; {pinning.note}",
        "requests per cell: " + ", ".join(f"c={c}: {n}" for c, n in plan.requests.items())
        + f", in {plan.rounds} slices per cell with the targets taking turns",
    ])


def _footer(cells: Sequence[Cell]) -> str:
    requests = sum(c.requests for c in cells) or 1
    emulator_ms = 1000 * sum(c.other_cpu_s["emulator"] for c in cells) / requests
    loadgen_ms = 1000 * sum(c.other_cpu_s["loadgen"] for c in cells) / requests
    return (f"CPU ms/req: the server process's utime+stime over the measured requests (clock tick "
            f"{1000 / CLOCK_TICKS:g} ms). server core %: that CPU time over wall time. harness CPU %: "
            f"emulator + load generator CPU over wall time, in % of one core (they cost "
            f"{emulator_ms:.2f} + {loadgen_ms:.2f} ms per request); when it is higher than the server's, "
            "the harness, not the target, caps req/s and the fixed latency makes requests move in "
            "bursts, which queues them.")


def figures(cells: Sequence[Cell]) -> Figures:
    """Each cell's figures by `target.cN.what`, and the ratios the targets are about by name."""
    found = cell_figures(cells)
    for gateway in ("gateway", BASELINE):
        for concurrency in sorted({c.concurrency for c in cells}):
            mine, floor = find_cell(cells, gateway, concurrency), find_cell(cells, "passthrough", concurrency)
            if mine and floor and mine.cpu_ms_per_request and floor.cpu_ms_per_request:
                found[f"cpu_ratio.{gateway}_over_passthrough.c{concurrency}"] = (
                    mine.cpu_ms_per_request / floor.cpu_ms_per_request)
    gw_cpu, pt_cpu = pooled_cpu_ms(cells, "gateway"), pooled_cpu_ms(cells, "passthrough")
    if gw_cpu and pt_cpu:
        found["cpu_ratio.gateway_over_passthrough.pooled"] = gw_cpu / pt_cpu
    return found


def main(argv: Sequence[str] | None = None) -> Figures:
    plan = parse_args(argv)
    pinning = settle_in(plan.pin)
    print(_header(plan, pinning), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp, ProcessGroup(Path(tmp)) as group:
        cells = asyncio.run(run(plan, start_servers(group, plan, pinning)))
    print()
    print(render_table(cells))
    print()
    print(render_summary(cells))
    print()
    print(_footer(cells))
    return figures(cells)
