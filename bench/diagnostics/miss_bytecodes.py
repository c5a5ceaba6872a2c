"""Python bytecodes a cache miss runs, by function: where the interpreter's share of a miss goes.

    python -m bench run miss-bytecodes               # the 60 functions that run the most
    python -m bench run miss-bytecodes -- --top 200 --requests 300

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
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench import miss_logic
from bench.registry import Figures
from bench.workload import FreshBodies

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
    counter = BytecodeCounter()
    async with miss_logic.started_app() as app:
        fresh = FreshBodies(broadcast_query=False)
        payload = miss_logic._Body()
        template = miss_logic._template(app, payload)
        for traced in (False, True):  # a warm-up round, then the counted one
            bodies = fresh.bodies(requests)
            clones = [template.clone() for _ in bodies]  # the bench's own mocks, not counted
            if traced:
                sys.settrace(counter.trace)
            for body, request in zip(bodies, clones):
                payload.next(body)
                await app._handle(request)
            sys.settrace(None)
    return counter.counts


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--top", type=int, default=60)
    args = parser.parse_args(argv)
    miss_logic.log_requests_to(os.devnull)
    counts = asyncio.run(count_misses(args.requests))
    total = sum(counts.values())
    print(f"{total / args.requests:,.0f} bytecodes a miss ({args.requests} misses), the {args.top} functions that run the most:\n")
    print("| bytecodes a miss | share | function (file) |")
    print("|---|---|---|")
    for where, count in counts.most_common(args.top):
        print(f"| {count / args.requests:,.1f} | {100 * count / total:.1f}% | {where} |")
    return {"bytecodes_per_miss": total / args.requests}
