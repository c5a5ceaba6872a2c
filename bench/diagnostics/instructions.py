"""Instructions per request on the miss path, the gateway against the pass-through, under callgrind.

    python -m bench run instructions                       # c=16 and c=64, 300 requests each
    python -m bench run instructions -- --baseline /tmp/before  # and another checkout's gateway
    python -m bench run instructions -- --clients 100     # and the gateway with 100 clients configured

CPU seconds on a shared 2-core machine move by ±20% from run to run (other processes, cache
and frequency effects), more than most single changes save. Instructions do not: valgrind's
callgrind counts those the process executes, the same count for the same work whatever else
runs. bench/core.py's load (one query, 20 fresh documents of ~400 chars, against the emulator)
goes to each server in turn, with callgrind's counting switched on (`callgrind_control -i on`)
for the measured requests only: start-up and warm-up are not counted. Each server runs ~30-50
times slower under valgrind, so more requests wait in each event-loop turn than at full speed;
every server meets the same load, so the ratio is what compares. Prints instructions per
request and the ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import harness
from bench.clients import clients_config
from bench.harness import (
    REPO,
    ProcessGroup,
    Server,
    client_session,
    drive,
    markdown,
    start_emulator,
    write_gateway_config,
)
from bench.registry import Figures
from bench.workload import FreshBodies

# Under valgrind a server starts tens of times slower: importing aiohttp, pydantic and redis.
harness.READY_TIMEOUT_S = 300.0


def _callgrind(out: Path) -> list[str]:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind not found (apt-get install valgrind)")
    return [valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]


def start_counted(group: ProcessGroup, name: str, argv: list[str], port: int, checkout: Path = REPO) -> Server:
    return group.start(name, [*_callgrind(group.workdir / f"{name}.callgrind"), *argv], port, None, checkout=checkout)


def start_targets(group: ProcessGroup, baseline: Path | None, clients: int = 0) -> dict[str, Server]:
    emulator = start_emulator(group, None, 20.0)
    config = write_gateway_config(group.workdir / "gateway.toml", emulator.port)
    configs = {"gateway": (config, REPO), "baseline": (config, baseline)}
    if clients:
        # The whole miss, both HTTP hops included, with the bench's key held by one of them
        # (bench/clients.py measures the miss logic alone).
        with_clients = group.workdir / "gateway-clients.toml"
        with_clients.write_text(config.read_text() + clients_config(clients, budgets=False))
        configs[f"gateway+{clients} clients"] = (with_clients, REPO)
    targets = {}
    port = group.free_port()
    targets["passthrough"] = start_counted(group, "passthrough", [
        sys.executable, "-m", "bench.passthrough", "--port", str(port), "--upstream", emulator.base_url,
    ], port)
    for name, (path, checkout) in configs.items():
        if checkout is None:
            continue
        port = group.free_port()
        targets[name] = start_counted(group, name.replace(" ", "-"), [
            sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port), "--workers", "1",
        ], port, checkout=checkout.resolve())
    group.wait_ready()
    return targets


def counted_instructions(server: Server, workdir: Path) -> int:
    """Dump the server's counts since its last dump (a dump starts the count again) and read their total."""
    for stale in workdir.glob(f"{server.name}.callgrind.*"):
        stale.unlink()
    subprocess.run(["callgrind_control", "--dump", str(server.proc.pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for dump in workdir.glob(f"{server.name}.callgrind.*"):
            found = re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.MULTILINE)
            if found:
                return int(found.group(1))
        time.sleep(0.2)
    raise RuntimeError(f"no callgrind dump from {server.name}")


def set_counting(server: Server, on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(server.proc.pid)],
                   check=True, capture_output=True)


async def measure(targets: dict[str, Server], workdir: Path, concurrencies: Sequence[int],
                  requests: int) -> list[list[str]]:
    rows = [["target", "concurrency", "requests", "errors", "instructions/request", "÷ passthrough"]]
    async with client_session() as session:
        fresh = FreshBodies(broadcast_query=False)
        for concurrency in concurrencies:
            counted: dict[str, float] = {}
            for name, server in targets.items():
                # The emulator wants the query once per document; the gateway sends it so, from the KB call.
                broadcast = name == "passthrough"
                bodies = (fresh.body(broadcast=broadcast) for _ in itertools.count())
                await drive(session, server.url(), itertools.islice(bodies, 2 * concurrency), concurrency, [])  # warm
                counted_instructions(server, workdir)  # what came before is not this cell's
                set_counting(server, True)
                tally = await drive(session, server.url(), itertools.islice(bodies, requests), concurrency, [])
                set_counting(server, False)
                counted[name] = counted_instructions(server, workdir) / requests
                ratio = counted[name] / counted["passthrough"] if counted["passthrough"] else float("nan")
                rows.append([name, str(concurrency), str(requests), str(tally.errors), f"{counted[name]:,.0f}",
                             f"{ratio:.2f}x"])
    return rows


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout's gateway, measured too")
    parser.add_argument("--clients", type=int, default=0, help="also the gateway with this many clients configured")
    parser.add_argument("--keep", type=Path, default=None,
                        help="write the callgrind files (and logs) here, for callgrind_annotate, instead of a temporary folder")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.keep is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-instructions-")))
        else:
            workdir = args.keep
            workdir.mkdir(parents=True, exist_ok=True)
        group = stack.enter_context(ProcessGroup(workdir))
        targets = start_targets(group, args.baseline, args.clients)
        rows = asyncio.run(measure(targets, workdir, args.concurrency, args.requests))
    print(markdown(rows))
    if args.keep is not None:
        print(f"callgrind files: {args.keep}/*.callgrind* (callgrind_annotate FILE)")
    # rows: target, concurrency, requests, errors, instructions/request, ÷ passthrough
    return {f"{row[0]}.c{row[1]}.instructions_per_request": float(row[4].replace(",", "")) for row in rows[1:]}
