"""Where the gateway's CPU goes on one path: py-spy samples of the gateway under a steady load.

    python -m bench run profile -- miss            # fresh pairs, in-process cache, c=64
    python -m bench run profile -- hit             # every pair cached in a private Redis
    python -m bench run profile -- miss-redis      # fresh pairs, with that Redis as the cache
    python -m bench run profile -- miss --svg out.svg --seconds 20
    python -m bench run profile -- passthrough     # the pass-through proxy on the miss path's load

Starts the emulator (20 ms), a private redis-server for `hit` and `miss-redis`, and one gateway pinned to the
first CPU (the harness on the other, as in bench/core.py), drives it at `--concurrency`, and
records it with `py-spy record` (`--nonblocking` where ptrace may not stop it) (py-spy must be on PATH or beside the Python),
or with `perf record` (`--perf`: the split by library, the kernel's share among them).
Prints each part of the request path's share of the samples (every sample counted once, in
the first part of PARTS it passes through), then the top functions by own samples.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.harness import (
    HEADERS,
    ProcessGroup,
    Server,
    cache_header_is,
    client_session,
    drive,
    fill_cache,
    redis_url,
    settle_in,
    start_emulator,
    start_gateway,
    start_passthrough,
    start_redis,
)
from bench.registry import Figures
from bench.workload import DOCUMENTS_PER_REQUEST, FreshBodies

# Each sample goes to the first part, in this order, with a frame containing one of its
# substrings ("Class.function (file:line)"): specific parts first, so shares add up to 100%.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pair digests (BLAKE2b)", ("pair_keys (gateway/cache/base.py",)),
    ("repeated-key check", ("reject_duplicate_keys (gateway/web/rerank.py",)),
    ("metrics (prometheus-client)", ("(gateway/observability/metrics.py", "(gateway/observability/tally.py",
                                     "prometheus_client/")),
    ("request log line", ("(gateway/observability/logs.py", "(logging/", "_observe (gateway/web/edge.py")),
    ("provider HTTP (transport, aiohttp client)", ("_post (gateway/providers/client.py", "(gateway/providers/transport.py",
                                                   "(aiohttp/client", "(aiohttp/connector")),
    ("provider wire + JSON + checks", ("(gateway/providers/",)),
    ("Redis client (redisio/commands.py, redis-py)", ("(gateway/redisio/commands.py", "(redis/", "/redis/", "(hiredis")),
    ("score cache", ("(gateway/cache/",)),
    ("single flight", ("(gateway/scoring/flights.py",)),
    ("budget ledger", ("(gateway/budget/",)),
    ("guard (breaker, retries, timeouts)", ("(gateway/resilience/guarded_call.py", "(gateway/resilience/")),
    ("router", ("(gateway/scoring/router.py",)),
    ("service (unique pairs, merge)", ("(gateway/scoring/service.py",)),
    ("body read + JSON parse", ("_read_json (gateway/web/rerank.py",)),
    ("dialect decode + limits", ("(gateway/dialects/", "(gateway/web/request_limits.py")),
    ("response (json_response, headers)", ("json_response (gateway/web/edge.py",)),
    ("handler + edge middleware, rest", ("(gateway/web/edge.py", "(gateway/web/rerank.py", "(gateway/runtime.py", "(gateway/models.py")),
    ("aiohttp server (parse, dispatch, write)", ("(aiohttp/",)),
    ("event loop (selector, callbacks, tasks)", ("asyncio/", "selectors.py", "uvloop")),
)


def summarize(raw: Path, top: int = 25) -> str:
    """Each part's share of the samples (adding up to 100%) and the top functions by own samples."""
    total = 0
    shares: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        shares[_part_of(frames)] += count
        own[_short(frames[-1])] += count
    lines = [f"samples: {total}", "", "| part | share of samples |", "|---|---|"]
    lines += [f"| {label} | {100 * shares[label] / max(1, total):.1f}% |" for label, _ in PARTS]
    lines += [f"| other | {100 * shares['other'] / max(1, total):.1f}% |"]
    lines += ["", "| function (own samples) | share |", "|---|---|"]
    lines += [f"| {name} | {100 * n / max(1, total):.1f}% |" for name, n in own.most_common(top)]
    return "\n".join(lines)


def _part_of(frames: Sequence[str]) -> str:
    for label, needles in PARTS:
        if any(needle in frame for frame in frames for needle in needles):
            return label
    return "other"


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    path = where.split(":")[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def by_library(recorded: Path, top: int = 12) -> str:
    """`perf report`'s share of the samples by shared object: the interpreter, the kernel, each C extension."""
    report = subprocess.run(["perf", "report", "-i", str(recorded), "--sort", "dso", "--stdio"],
                            check=True, capture_output=True, text=True).stdout
    rows = [line.split(None, 1) for line in report.splitlines() if line.strip() and not line.startswith("#")]
    lines = ["| library | share of samples |", "|---|---|"]
    lines += [f"| {name.strip()} | {share} |" for share, name in rows[:top]]
    return "\n".join(lines)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(found):
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


async def load(gateway: Server, path: str, concurrency: int, seconds: float, record: list[str]) -> None:
    async with client_session() as session:
        if path == "hit":
            pool = FreshBodies(broadcast_query=False, label="h").bodies(500)
            hit = cache_header_is(f"hits={DOCUMENTS_PER_REQUEST}; misses=0", "cache")
            await fill_cache(session, gateway, pool, hit)
            bodies: Iterator[bytes] = itertools.cycle(pool)
        else:
            fresh = FreshBodies(broadcast_query=False)
            bodies = (fresh.body() for _ in itertools.count())
        warm_until = time.monotonic() + 2
        while time.monotonic() < warm_until:
            await drive(session, gateway.url(), itertools.islice(bodies, 200), concurrency, [], HEADERS)
        spy = subprocess.Popen(record)
        started, sent = time.monotonic(), 0
        while spy.poll() is None:
            await drive(session, gateway.url(), itertools.islice(bodies, 500), concurrency, [], HEADERS)
            sent += 500
        print(f"{sent} requests in {time.monotonic() - started:.1f} s", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", choices=["miss", "hit", "miss-redis", "passthrough"])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--svg", help="also write a flame graph here")
    parser.add_argument("--raw", help="keep the collapsed stacks here")
    parser.add_argument("--nonblocking", action="store_true",
                        help="sample without pausing the gateway (where ptrace may not stop it; stacks can tear)")
    parser.add_argument("--perf", action="store_true",
                        help="record with `perf record` instead: the CPU split by library (interpreter, kernel, C extensions)")
    args = parser.parse_args(argv)
    pinning = settle_in(True)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp, ProcessGroup(Path(tmp)) as group:
        emulator = start_emulator(group, pinning.emulator, 20.0)
        cache = ""
        if args.path in ("hit", "miss-redis"):
            redis = start_redis(group, pinning.emulator)
            group.wait_ready()
            cache = redis_url(redis)
        if args.path == "passthrough":  # the floor, profiled the same way: which parts it pays too
            gateway = start_passthrough(group, pinning.proxy, emulator)
        else:
            gateway = start_gateway(group, pinning.proxy, emulator, cache_url=cache, cache_timeout_ms=1000)
        group.wait_ready()
        if args.perf:
            recorded = Path(tmp) / "perf.data"
            perf = ["perf", "record", "-F", "999", "-p", str(gateway.proc.pid), "-o", str(recorded), "--",
                    "sleep", f"{args.seconds:g}"]
            asyncio.run(load(gateway, args.path, args.concurrency, args.seconds, perf))
            print(by_library(recorded))
            return {}  # the split by library is perf's table: read it, it has no stable names
        raw = Path(args.raw or Path(tmp) / "profile.txt")
        base = [py_spy(), "record", *(["--nonblocking"] if args.nonblocking else []), "--pid", str(gateway.proc.pid),
                "--rate", str(args.rate), "--duration", f"{args.seconds:g}"]
        record = [*base, "--format", "raw", "-o", str(raw)]
        asyncio.run(load(gateway, args.path, args.concurrency, args.seconds, record))
        print(summarize(raw))
        if args.svg:
            asyncio.run(load(gateway, args.path, args.concurrency, args.seconds, [*base, "-o", args.svg]))
    return {}  # shares of samples, printed: a profile is read, not compared by name
