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
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import miss_logic

BENCH = Path(__file__).resolve().parent


def _nothing(*_: Any, **__: Any) -> None:
    return None


async def _nothing_async(*_: Any, **__: Any) -> None:
    return None


def _no_log_line() -> None:
    from gateway.web import edge
    edge.request_log.write = _nothing  # type: ignore[method-assign]


def _no_log_format() -> None:
    from gateway.observability.logs import JsonFormatter
    JsonFormatter.format = lambda self, record: "{}"  # type: ignore[method-assign]


def _no_log_handling() -> None:
    """The line's fields and record are still made; logging's handling of the record is not."""
    from gateway.web import edge
    edge.request_log.logger.handle = _nothing  # type: ignore[method-assign]


def _no_metrics() -> None:
    from gateway.observability.metrics import GatewayMetrics
    for name in ("record_request", "record_cache", "record_usage", "record_upstream_call", "set_breaker_state"):
        setattr(GatewayMetrics, name, _nothing)


def _no_history() -> None:
    from gateway.observability.history import MinuteHistory
    MinuteHistory.record_request = _nothing  # type: ignore[method-assign]
    MinuteHistory.record_spend = _nothing  # type: ignore[method-assign]


def _no_accounting() -> None:
    from gateway.resilience.guarded_call import GuardedCall
    GuardedCall._account = _nothing_async  # type: ignore[method-assign]


def _no_settle() -> None:
    from gateway.budget.memory import MemoryLedger
    MemoryLedger.settle = _nothing_async  # type: ignore[assignment,method-assign]


def _no_cache_write() -> None:
    from gateway.cache.memory import MemoryScoreCache
    MemoryScoreCache.put_many = _nothing_async  # type: ignore[method-assign]


def _no_repeated_key_check() -> None:
    from gateway.web import rerank
    rerank.reject_duplicate_keys = _nothing


def _cheap_digests() -> None:
    from gateway.cache import base
    from gateway.scoring import service

    def digests(documents: Any) -> list[bytes]:
        # Distinct for distinct passages of one run, which is all the measurement needs.
        return [hash(d).to_bytes(16, "little", signed=True) for d in documents]

    base.passage_digests = service.passage_digests = digests


def _no_attempts_trace() -> None:
    from gateway.resilience import guarded_call
    guarded_call.note_attempt = _nothing


def _no_latency_record() -> None:
    from gateway.resilience.latency import LatencyTracker
    LatencyTracker.record = _nothing  # type: ignore[method-assign]


def _no_size_limits() -> None:
    from gateway.web import rerank
    rerank.check_limits = _nothing


def _no_client_key() -> None:
    from gateway.web import rerank
    rerank.require_client_key = _nothing


def _no_failing_check() -> None:
    from gateway.web import rerank
    rerank._failing_provider = _nothing


def _no_try_timeout() -> None:
    import contextlib

    from gateway.resilience import guarded_call

    class _Asyncio:
        """asyncio, but its `timeout` does nothing."""
        timeout = staticmethod(lambda _: contextlib.nullcontext())

        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

    guarded_call.asyncio = _Asyncio()  # type: ignore[assignment]


PARTS: dict[str, tuple[str, Callable[[], None]]] = {
    "log": ("the request log line (logging's handling, the JSON formatter)", _no_log_line),
    "log-handling": ("the log line's handling: logger, handler, formatter, buffer (fields and record made)",
                     _no_log_handling),
    "log-format": ("the JSON formatter alone", _no_log_format),
    "metrics": ("metrics: the record_* calls (tallied, see observability/tally.py)", _no_metrics),
    "history": ("the /status minute history", _no_history),
    "accounting": ("usage accounting after the call: settle, usage metrics, estimates", _no_accounting),
    "settle": ("the ledger's settle alone", _no_settle),
    "cache-write": ("the in-process cache's write", _no_cache_write),
    "repeated-keys": ("the repeated-key check (a regex over the body)", _no_repeated_key_check),
    "digests": ("the pair digests (BLAKE2b), replaced by hash()", _cheap_digests),
    "attempts": ("the attempts trace (feeds the log line too)", _no_attempts_trace),
    "latency": ("the latency window's record (feeds the try's limit)", _no_latency_record),
    "limits": ("the size limits' check", _no_size_limits),
    "client-key": ("the client key check", _no_client_key),
    "failing": ("the failing-canary check on the answer", _no_failing_check),
    "try-timeout": ("the try's asyncio.timeout (the request's own stays)", _no_try_timeout),
}


def child(part: str, requests: int) -> None:
    """One run in this process, under callgrind: the part made a no-op, then the requests."""
    miss_logic.log_requests_to(os.devnull)
    if part != "none":
        PARTS[part][1]()
    asyncio.run(miss_logic.measure(requests, 1, check=False))  # the same work in every run; miss_logic.py checks its answers


def count(part: str, requests: int, tmp: Path) -> int:
    """Instructions per miss of one child run."""
    out = tmp / f"callgrind.{part}"
    env = {**os.environ, "PYTHONHASHSEED": "0", "MISS_LOGIC_CALLGRIND": "1"}
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--instr-atstart=no",
                    sys.executable, __file__, "--child", part, "--requests", str(requests)],
                   cwd=BENCH, env=env, check=True, capture_output=True)
    annotated = subprocess.run(["callgrind_annotate", str(out)], check=True, capture_output=True, text=True).stdout
    total = next(line for line in annotated.splitlines() if "PROGRAM TOTALS" in line)
    return int(total.split()[0].replace(",", "")) // requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", help=f"of: {', '.join(PARTS)} (default: all)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.requests)
        return 0
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {', '.join(PARTS)}")
    with tempfile.TemporaryDirectory(prefix="miss-prices-") as tmp:
        whole = count("none", args.requests, Path(tmp))
        print(f"a miss as it is: {whole:,} instructions ({args.requests} misses, PYTHONHASHSEED=0)\n")
        print("| part | instructions per miss without it | its price | share |")
        print("|---|---|---|---|")
        for part in args.parts or PARTS:
            without = count(part, args.requests, Path(tmp))
            price = whole - without
            print(f"| {PARTS[part][0]} | {without:,} | {price:,} | {100 * price / whole:.1f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
