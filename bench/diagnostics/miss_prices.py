"""What each part of a cache miss costs, in instructions: the part replaced by a no-op, counted again.

    python -m bench run miss-prices                 # every part (about 10 s each under valgrind)
    python -m bench run miss-prices -- log metrics     # only these
    python -m bench run miss-prices -- --requests 300

Runs `miss_logic.py`'s requests (the gateway's own work per miss, no sockets) under
`valgrind --tool=callgrind`, once as it is and once per part with that part made a no-op, with
PYTHONHASHSEED=0 so a count repeats to a few instructions (the answers are not checked here, so that
every run does the same work; `miss_logic.py` checks them). A part's price is what its no-op
saves. Prices overlap where one part feeds another (the attempts trace feeds the log line), so
they do not add up to the whole; a C-heavy part (the regex, the digests) costs fewer seconds
than its instructions suggest, a Python-heavy one more. It asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import miss_logic
from bench.registry import Figures

REPO = Path(__file__).resolve().parents[2]


class PartGone(RuntimeError):
    """A part names an attribute the gateway no longer has: re-point it in PARTS."""


@dataclass(frozen=True)
class Patch:
    """`module.path` (an attribute path: `request_log.write`) replaced by `replacement` for one run."""

    module: str
    path: str
    replacement: object

    def owner(self) -> object:
        """What holds the attribute; PartGone, naming it, when any step of the path is missing."""
        try:
            found: object = importlib.import_module(self.module)
        except ImportError as exc:
            raise PartGone(f"{self.module}.{self.path}: module {self.module} no longer exists ({exc})") from exc
        *steps, name = self.path.split(".")
        walked = self.module
        for step in [*steps, name]:
            if not hasattr(found, step):
                raise PartGone(f"{self.module}.{self.path}: {walked} has no attribute {step!r} any more")
            if step != name:
                found, walked = getattr(found, step), f"{walked}.{step}"
        return found

    def apply(self) -> None:
        setattr(self.owner(), self.path.rsplit(".", 1)[-1], self.replacement)


@dataclass(frozen=True)
class Part:
    summary: str
    patches: tuple[Patch, ...]

    def check(self) -> None:
        for patch in self.patches:
            patch.owner()

    def apply(self) -> None:
        self.check()  # all or nothing: never a part half made a no-op
        for patch in self.patches:
            patch.apply()


def _nothing(*_: Any, **__: Any) -> None:
    return None


async def _nothing_async(*_: Any, **__: Any) -> None:
    return None


def _hash_digests(documents: Any) -> list[bytes]:
    # Distinct for distinct passages of one run, which is all the measurement needs.
    return [hash(d).to_bytes(16, "little", signed=True) for d in documents]


class _AsyncioWithoutTimeout:
    """asyncio, but its `timeout` does nothing."""

    timeout = staticmethod(lambda _: contextlib.nullcontext())

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


_METRICS = ("record_request", "record_cache", "record_usage", "record_upstream_call", "set_breaker_state")

# One line a part: what it is, and each attribute its no-op replaces. When the gateway moves a
# part (gateway/scoring's internals are being rebuilt), re-point its line; a stale one fails by name.
PARTS: dict[str, Part] = {
    "log": Part("the request log line (logging's handling, the JSON formatter)",
                (Patch("gateway.web.edge", "request_log.write", _nothing),)),
    "log-handling": Part("the log line's handling: logger, handler, formatter, buffer (fields and record made)",
                         (Patch("gateway.web.edge", "request_log.logger.handle", _nothing),)),
    "log-format": Part("the JSON formatter alone",
                       (Patch("gateway.observability.logs", "JsonFormatter.format", lambda self, record: "{}"),)),
    "metrics": Part("metrics: the record_* calls (tallied, see observability/tally.py)",
                    tuple(Patch("gateway.observability.metrics", f"GatewayMetrics.{name}", _nothing) for name in _METRICS)),
    "history": Part("the /status minute history", (Patch("gateway.observability.history", "MinuteHistory.record_request", _nothing),
                                                   Patch("gateway.observability.history", "MinuteHistory.record_spend", _nothing))),
    "accounting": Part("usage accounting after the call: settle, usage metrics, estimates",
                       (Patch("gateway.resilience.guarded_call", "GuardedCall._account", _nothing_async),)),
    "settle": Part("the ledger's settle alone", (Patch("gateway.budget.memory", "MemoryLedger.settle", _nothing_async),)),
    "cache-write": Part("the in-process cache's write",
                        (Patch("gateway.cache.memory", "MemoryScoreCache.put_many", _nothing_async),)),
    "repeated-keys": Part("the repeated-key check (a regex over the body)",
                          (Patch("gateway.web.rerank", "reject_duplicate_keys", _nothing),)),
    "digests": Part("the pair digests (BLAKE2b), replaced by hash()",
                    (Patch("gateway.cache.base", "passage_digests", _hash_digests),
                     Patch("gateway.scoring.service", "passage_digests", _hash_digests))),
    "attempts": Part("the attempts trace (feeds the log line too)",
                     (Patch("gateway.resilience.guarded_call", "note_attempt", _nothing),)),
    "latency": Part("the latency window's record (feeds the try's limit)",
                    (Patch("gateway.resilience.latency", "LatencyTracker.record", _nothing),)),
    "limits": Part("the size limits' check", (Patch("gateway.web.rerank", "check_limits", _nothing),)),
    "client-key": Part("the client key check", (Patch("gateway.clients.book", "ClientBook.identify", _nothing),)),
    "failing": Part("the failing-canary check on the answer", (Patch("gateway.web.rerank", "_failing_provider", _nothing),)),
    "try-timeout": Part("the try's asyncio.timeout (the request's own stays)",
                        (Patch("gateway.resilience.guarded_call", "asyncio", _AsyncioWithoutTimeout()),)),
}


def child(part: str, requests: int) -> None:
    """One run in this process, under callgrind: the part made a no-op, then the requests."""
    miss_logic.log_requests_to(os.devnull)
    if part != "none":
        PARTS[part].apply()
    asyncio.run(miss_logic.measure(requests, 1, check=False))  # the same work in every run; miss_logic.py checks its answers


def count(part: str, requests: int, tmp: Path) -> int:
    """Instructions per miss of one child run."""
    out = tmp / f"callgrind.{part}"
    env = {**os.environ, "PYTHONHASHSEED": "0", "MISS_LOGIC_CALLGRIND": "1"}
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--instr-atstart=no",
                    sys.executable, "-m", "bench", "run", "miss-prices", "--", "--child", part,
                    "--requests", str(requests)],
                   cwd=REPO, env=env, check=True, capture_output=True)
    annotated = subprocess.run(["callgrind_annotate", str(out)], check=True, capture_output=True, text=True).stdout
    total = next(line for line in annotated.splitlines() if "PROGRAM TOTALS" in line)
    return int(total.split()[0].replace(",", "")) // requests


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", help=f"of: {', '.join(PARTS)} (default: all)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.requests)
        return {}
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {', '.join(PARTS)}")
    for part in args.parts or PARTS:  # before any valgrind run: a stale part fails at once, by name
        PARTS[part].check()
    figures: Figures = {}
    with tempfile.TemporaryDirectory(prefix="miss-prices-") as tmp:
        whole = count("none", args.requests, Path(tmp))
        figures["whole.instructions_per_miss"] = whole
        print(f"a miss as it is: {whole:,} instructions ({args.requests} misses, PYTHONHASHSEED=0)\n")
        print("| part | instructions per miss without it | its price | share |")
        print("|---|---|---|---|")
        for part in args.parts or PARTS:
            without = count(part, args.requests, Path(tmp))
            price = whole - without
            figures[f"{part}.price_instructions"] = price
            print(f"| {PARTS[part].summary} | {without:,} | {price:,} | {100 * price / whole:.1f}% |", flush=True)
    return figures
