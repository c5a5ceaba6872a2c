"""Python bytecodes a cache miss runs, by function: where the interpreter's share of a miss goes.

    python bench/miss_bytecodes.py               # the 60 functions that run the most
    python bench/miss_bytecodes.py --top 200 --requests 300

`miss_logic.py`'s requests (the gateway's own work per miss, no sockets), run once for warm-up and
then under `sys.settrace` with opcode events: each bytecode a function runs counts for it (its
own, not its callees'), a dataclass's generated `__init__` for the class it builds. Counts repeat
from run to run, unlike seconds. A bytecode is not a fixed price (one calls BLAKE2b, another
loads a local), so read it beside `miss_prices.py`: a part with few bytecodes and a high price is
C work, one with many is the interpreter's. It asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

from aiohttp import web

import miss_logic
from gateway.app import create_app
from gateway.config import load_config
from gateway.observability.logs import configure_logging
from gateway.web.edge import LIVE
from harness import BENCH_KEY, BENCH_KEY_ENV, write_gateway_config
from workload import FreshBodies

_TRIM = (sysconfig.get_paths()["purelib"] + "/", sysconfig.get_paths()["stdlib"] + "/", str(Path(__file__).resolve().parent.parent) + "/")


def _where(frame: FrameType) -> str:
    code = frame.f_code
    if code.co_filename == "<string>" and code.co_name == "__init__":
        return f"{type(frame.f_locals.get('self')).__name__}.__init__ (a dataclass's)"
    path = code.co_filename
    for prefix in _TRIM:
        path = path.removeprefix(prefix)
    return f"{code.co_qualname} ({path})"


class BytecodeCounter:
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        where = _where(frame)
        counts = self.counts

        def count(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode":
                counts[where] += 1
            return count

        return count


async def count_misses(requests: int) -> collections.Counter[str]:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[BENCH_KEY_ENV] = BENCH_KEY
        app = create_app(load_config(write_gateway_config(Path(tmp) / "gateway.toml", 9)))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for client in app[LIVE].current.clients.values():
            client._send = miss_logic._answer_in_process  # the upstream hop, answered here
        fresh = FreshBodies(broadcast_query=False)
        payload = miss_logic._Body()
        template = miss_logic._template(app, payload)
        counter = BytecodeCounter()
        try:
            for traced in (False, True):  # a warm-up round, then the counted one
                bodies = fresh.bodies(requests)
                clones = [template.clone() for _ in bodies]  # the bench's own mocks, not counted
                if traced:
                    sys.settrace(counter.trace)
                for body, request in zip(bodies, clones):
                    payload.next(body)
                    await app._handle(request)
                sys.settrace(None)
        finally:
            await runner.cleanup()
        return counter.counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--top", type=int, default=60)
    args = parser.parse_args()
    configure_logging("INFO", "json")
    handler = logging.getLogger().handlers[-1]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(open(os.devnull, "w"))  # noqa: SIM115  # open for the run's life
    counts = asyncio.run(count_misses(args.requests))
    total = sum(counts.values())
    print(f"{total / args.requests:,.0f} bytecodes a miss ({args.requests} misses), the {args.top} functions that run the most:\n")
    print("| bytecodes a miss | share | function (file) |")
    print("|---|---|---|")
    for where, count in counts.most_common(args.top):
        print(f"| {count / args.requests:,.1f} | {100 * count / total:.1f}% | {where} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
