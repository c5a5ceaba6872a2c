"""System calls per request on the miss path, the gateway against the pass-through (strace -c).

    python -m bench run syscalls                      # c=16, 2000 requests each
    python -m bench run syscalls -- --concurrency 64 --requests 4000

Neither `miss_logic.py` (no sockets, one loop turn) nor `instructions.py` (user-space
instructions only) sees what a server asks of the kernel, which CPU seconds do count. Each
server gets bench/core.py's load (one query, 20 fresh documents, against the emulator) after a
warm-up, with `strace -c -f` attached for the measured requests only; prints each one's
system calls per request by name. strace slows the traced process, so read the counts, not
its seconds. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.harness import (
    PATH,
    ProcessGroup,
    Server,
    client_session,
    drive,
    markdown,
    start_emulator,
    start_gateway,
    start_passthrough,
)
from bench.registry import Figures
from bench.workload import FreshBodies

WARM_UP_REQUESTS = 300
_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def calls_by_name(strace_summary: str) -> dict[str, int]:
    """`strace -c`'s table as {system call: calls}."""
    calls = {}
    for line in strace_summary.splitlines():
        match = _ROW.match(line)
        if match and match.group(2) != "total":
            calls[match.group(2)] = int(match.group(1))
    return calls


async def traced_calls(server: Server, fresh: FreshBodies, requests: int, concurrency: int, workdir: Path) -> dict[str, int]:
    url = server.base_url + PATH
    async with client_session() as session:
        await drive(session, url, iter(fresh.bodies(WARM_UP_REQUESTS)), concurrency, [])
        out = workdir / f"strace.{server.name}"
        tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(server.proc.pid)],
                                  stderr=subprocess.DEVNULL)
        await asyncio.sleep(1.0)  # attached before the first measured request
        await drive(session, url, iter(fresh.bodies(requests)), concurrency, [])
        tracer.send_signal(signal.SIGINT)
        tracer.wait()
    return calls_by_name(out.read_text())


async def run(requests: int, concurrency: int) -> tuple[str, Figures]:
    with tempfile.TemporaryDirectory() as tmp, ProcessGroup(Path(tmp)) as group:
        emulator = start_emulator(group, None, latency_ms=20)
        servers = [start_passthrough(group, None, emulator), start_gateway(group, None, emulator)]
        group.wait_ready()
        fresh = FreshBodies(broadcast_query=False)
        counted = {server.name: await traced_calls(server, fresh, requests, concurrency, Path(tmp)) for server in servers}
    names = sorted({name for calls in counted.values() for name in calls},
                   key=lambda name: -max(calls.get(name, 0) for calls in counted.values()))
    rows = [["system call", *counted]]
    rows += [[name, *(f"{calls.get(name, 0) / requests:.2f}" for calls in counted.values())] for name in names]
    rows.append(["total", *(f"{sum(calls.values()) / requests:.2f}" for calls in counted.values())])
    figures = {f"{name}.syscalls_per_request": sum(calls.values()) / requests for name, calls in counted.items()}
    return f"System calls per request, c={concurrency}, {requests} requests each:\n\n" + markdown(rows), figures


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    if shutil.which("strace") is None:
        raise RuntimeError("strace is not installed: nothing to measure (apt-get install strace)")
    text, figures = asyncio.run(run(args.requests, args.concurrency))
    print(text)
    return figures
