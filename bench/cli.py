"""`python -m bench --list` and `python -m bench run NAME [--quick] [--json FILE] [-- OPTIONS]`.

OPTIONS go to the benchmark itself (`python -m bench run core -- --help` lists its own);
`--quick` adds the short run's options the registry names for it. Exit status 1 when the
benchmark fails (a server did not start, an answer was wrong, a diagnostic's target is gone),
never because of a figure.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import record
from bench.registry import BENCHMARKS, Benchmark, find


def listing() -> str:
    width = max(len(b.name) for b in BENCHMARKS)
    lines = ["benchmarks:"]
    lines += [f"  {b.name:<{width}}  {b.summary}" for b in BENCHMARKS if not b.diagnostic]
    lines += ["diagnostics (bench/diagnostics/):"]
    lines += [f"  {b.name:<{width}}  {b.summary}" for b in BENCHMARKS if b.diagnostic]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="rerank-gateway's benchmarks")
    parser.add_argument("--list", action="store_true", help="each benchmark's name and what it measures")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="run one benchmark")
    run.add_argument("name", help="a name from --list")
    run.add_argument("--quick", action="store_true", help="a short smoke run (the figures are rough)")
    run.add_argument("--json", type=Path, help="write the figures, commit, machine and versions here")
    # The benchmark's own options come after `--`, untouched: they may look like the suite's.
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.options = list(argv[split + 1:])
    if not args.list and args.command is None:
        parser.error("--list, or run NAME")
    return args


def run(benchmark: Benchmark, quick: bool, options: list[str], json: Path | None) -> int:
    argv = [*(benchmark.quick if quick else ()), *options]
    started, clock = record.now(), time.monotonic()
    try:
        figures = benchmark.main()(argv)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"bench {benchmark.name} failed: {exc}", file=sys.stderr)
        return 1
    if json is not None:
        record.write(json, benchmark.name, argv, started, time.monotonic() - clock, figures)
        print(f"\nfigures written to {json}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        print(listing())
        return 0
    try:
        benchmark = find(args.name)
    except KeyError:
        print(f"no benchmark {args.name!r}\n\n{listing()}", file=sys.stderr)
        return 2
    return run(benchmark, args.quick, args.options, args.json)
