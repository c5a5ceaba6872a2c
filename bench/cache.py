"""Score cache benchmark: the hit path, Redis memory per pair, and money saved upstream.

    python -m bench run cache                 # full run, a few minutes
    python -m bench run cache --quick         # smoke run
    python -m bench run cache -- --only memory   # one table: hit | memory | money

Prints three Markdown tables, each from its own processes (a private redis-server on a free
port, never the machine's Redis; the emulator; the gateway; the pass-through proxy), all on
loopback and all stopped at exit. It asserts nothing: only ratios within one run compare.
The tables themselves live in cache_hit.py, cache_memory.py and cache_money.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis

from bench.cache_hit import HitPlan, run_hit_section
from bench.cache_memory import run_memory_section
from bench.cache_money import run_money_section
from bench.harness import Pinning, settle_in
from bench.registry import Figures
from bench.workload import KbReplay

SECTIONS = ("hit", "memory", "money")


@dataclass(frozen=True)
class Plan:
    sections: tuple[str, ...]
    hit: HitPlan
    memory_pairs: int
    replay: KbReplay
    cache_timeout_ms: float  # the money table's gateway (the hit table's is in `hit`)
    pin: bool


def parse_args(argv: Sequence[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description="score cache: hit path, memory per pair, upstream spend")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--only", choices=SECTIONS, help="run one table only")
    parser.add_argument("--requests", type=int, default=None,
                        help="hit table: measured requests per cell (default 2000; --quick 200)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64], help="hit table (default 16 64)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="hit table: slices per cell, targets taking turns (default 4; --quick 1)")
    parser.add_argument("--pool", type=int, default=500, help="hit table: distinct cached requests (default 500)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="hit table: emulator latency (default 20)")
    parser.add_argument("--cache-timeout-ms", type=float, default=1000.0,
                        help="hit and money tables: the measured gateway's cache.timeout_ms (default 1000, so "
                             "a stall on a busy machine does not turn hits into misses; the hit table also "
                             "runs a gateway at the default)")
    parser.add_argument("--memory-pairs", type=int, default=None,
                        help="memory table: pairs per shape (default 100000; --quick 20000)")
    parser.add_argument("--money-requests", type=int, default=None,
                        help="money table: requests replayed (default 2000; --quick 400)")
    parser.add_argument("--seed", type=int, default=KbReplay.seed, help="money table: workload seed")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    args = parser.parse_args(argv)
    quick = args.quick
    hit = HitPlan(args.concurrency, args.requests or (200 if quick else 2000),
                  max(1, args.rounds or (1 if quick else 4)), args.pool, args.latency_ms, args.cache_timeout_ms)
    replay = KbReplay(requests=args.money_requests or (400 if quick else 2000), seed=args.seed)
    cache_timeout_ms: float = args.cache_timeout_ms
    sections = (args.only,) if args.only else SECTIONS
    return Plan(sections, hit, args.memory_pairs or (20_000 if quick else 100_000), replay, cache_timeout_ms, args.pin)


def _header(plan: Plan, pinning: Pinning) -> str:
    return "\n".join([
        "rerank-gateway score cache bench (issue: Score cache)",
        f"python {platform.python_version()}, aiohttp {aiohttp.__version__}, redis-py {redis.__version__}, "
        f"{os.cpu_count()} CPUs; {pinning.note}; Redis pinned with the emulator",
        # Other jobs on a shared machine move every number; this says how busy it was.
        "load average at start: " + " ".join(f"{load:.2f}" for load in os.getloadavg()),
    ])


def _sections(plan: Plan, pinning: Pinning) -> dict[str, tuple[str, Callable[[Path], tuple[str, Figures]]]]:
    hit = plan.hit
    return {
        "hit": (f"1. Hit path: every pair cached in Redis, {hit.requests} requests per cell in {hit.rounds} "
                f"slices, concurrency {', '.join(map(str, hit.concurrencies))}",
                lambda workdir: run_hit_section(hit, pinning, workdir)),
        "memory": (f"2. Memory: Redis bytes per cached pair, {plan.memory_pairs:,} pairs per shape, "
                   "written with RedisScoreCache.put_many",
                   lambda workdir: run_memory_section(plan.memory_pairs, pinning, workdir)),
        "money": (f"3. Money: a KB-like replay of {plan.replay.requests:,} requests through the gateway, "
                  "three ways of caching",
                  lambda workdir: run_money_section(plan.replay, plan.cache_timeout_ms, pinning, workdir)),
    }


def main(argv: Sequence[str] | None = None) -> Figures:
    plan = parse_args(argv)
    pinning = settle_in(plan.pin)
    print(_header(plan, pinning), flush=True)
    sections = _sections(plan, pinning)
    figures: Figures = {}
    for name in plan.sections:
        title, run = sections[name]
        started = time.monotonic()
        print(f"\n## {title}\n", flush=True)
        # Each section starts and stops its own processes in its own directory.
        with tempfile.TemporaryDirectory(prefix=f"bench-cache-{name}-") as tmp:
            try:
                text, found = run(Path(tmp))
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"the {name} table: {exc}") from exc
        print(text, flush=True)
        figures |= {f"{name}.{figure}": value for figure, value in found.items()}
        load = os.getloadavg()[0]
        print(f"\n({name}: {time.monotonic() - started:.0f} s; load average {load:.2f})", flush=True)
    return figures
