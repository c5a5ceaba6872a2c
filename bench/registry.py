"""Every benchmark and diagnostic by name: one line each, the only list the CLI reads.

A module is imported only when its benchmark runs, so `--list` works even when a diagnostic
names gateway internals that have since moved (it then fails, loudly, when it is run).
Each module has `main(argv: Sequence[str] | None) -> Figures`: it parses its own options,
prints its tables and returns its figures by name; it raises to fail.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

Figures = dict[str, float]
MICRO_QUICK = ("--fast", "-p", "6")  # pyperf's rough run, 3 worker processes (bench/micro.py)
Main = Callable[[Sequence[str] | None], Figures]


@dataclass(frozen=True)
class Benchmark:
    name: str
    summary: str  # what it measures, one line
    module: str
    quick: tuple[str, ...] = ("--quick",)  # the options `run NAME --quick` passes it
    diagnostic: bool = False

    def main(self) -> Main:
        return cast(Main, importlib.import_module(self.module).main)


def _diagnostic(name: str, summary: str, module: str, quick: tuple[str, ...]) -> Benchmark:
    return Benchmark(name, summary, f"bench.diagnostics.{module}", quick, diagnostic=True)


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("core", "miss path: gateway CPU/req ÷ pass-through's, req/s and p50 added, at c=1/16/64", "bench.core"),
    Benchmark("cache", "score cache: hit-path CPU against pass-through, Redis bytes per pair, money saved upstream",
              "bench.cache"),
    Benchmark("workers", "hit and miss req/s with serve --workers 1 against --workers 2", "bench.workers"),
    Benchmark("fleet", "paid ÷ distinct pairs of a KB replay through 1 worker, 2 workers, 2 processes", "bench.fleet"),
    Benchmark("transport", "provider call CPU: aiohttp ClientSession against HttpTransport", "bench.transport"),
    Benchmark("tracing", "request time with OpenTelemetry tracing off against on; the off hooks' ns per call",
              "bench.tracing", ("--rounds", "2", "--count", "50", *MICRO_QUICK)),
    Benchmark("miss-logic", "the gateway's own CPU per miss in one process, no sockets (µs/request)",
              "bench.miss_logic", ("--requests", "300", "--rounds", "3")),
    Benchmark("clients", "CPU per miss with 100 clients (key, models, rates, budgets) against none",
              "bench.clients", ("--requests", "300", "--rounds", "2")),
    Benchmark("cache-client", "score cache client CPU per Redis lookup: direct connections against redis-py",
              "bench.cache_client", ("--calls", "2000", "--rounds", "1")),
    Benchmark("cluster-client", "score cache client CPU per lookup on a three-master Redis Cluster",
              "bench.cluster_client", ("--lookups", "1000")),
    Benchmark("memory-cache", "in-process score cache: bytes per pair, and its byte bound holding",
              "bench.memory_cache", ("--pairs", "100000", "--shapes", "20,200")),
    Benchmark("history", "the /status minute history's cost per request (pyperf), beside a whole request",
              "bench.history", MICRO_QUICK),
    Benchmark("quality-overhead", "the quality guard's cache group + plan per request (pyperf); map fit and apply",
              "bench.quality_overhead", MICRO_QUICK),
    Benchmark("quality-availability", "a failing canary: requests answered and flagged; probe calls after reloads",
              "bench.quality_availability", ("--requests", "10", "--reloads", "3")),
    Benchmark("billing", "what a TEI provider and a split request failing part-way pay", "bench.billing", ()),
    Benchmark("long-documents", "CPU and tokens of 100 documents holding 10 long ones, chunk against truncate",
              "bench.long_documents"),
    Benchmark("readme-eval", "the README's two eval examples, run; `-- --write` puts their tables in README.md",
              "bench.readme_eval", ()),
    _diagnostic("instructions", "instructions per request, gateway against pass-through (callgrind)",
                "instructions", ("--requests", "50", "--concurrency", "16")),
    _diagnostic("syscalls", "system calls per request, gateway against pass-through (strace -c)",
                "syscalls", ("--requests", "300")),
    _diagnostic("miss-bytecodes", "Python bytecodes a miss runs, by function (sys.settrace)",
                "miss_bytecodes", ("--requests", "20", "--top", "20")),
    _diagnostic("miss-prices", "each part of a miss made a no-op under callgrind: its price in instructions",
                "miss_prices", ("--requests", "30", "log")),
    _diagnostic("walk", "the scoring and quality modules one miss runs in, in turn: stays, returns, climbs",
                "walk", ()),
    _diagnostic("profile", "py-spy (or perf) shares of the gateway's CPU by part of the request path",
                "profile_path", ("miss", "--seconds", "3")),
)


def find(name: str) -> Benchmark:
    for benchmark in BENCHMARKS:
        if benchmark.name == name:
            return benchmark
    raise KeyError(name)
