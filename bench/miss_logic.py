"""The gateway's own CPU per cache miss, in one process: everything but the two HTTP hops.

    python -m bench run miss-logic                       # this checkout
    PYTHONPATH=/tmp/before python -m bench run miss-logic   # another one (e.g. `git worktree add /tmp/before HEAD~1`)

The app the `serve` command builds, from the bench config (bench/harness.py), is started in
process; each request is the knowledge-base call (1 query, 20 fresh documents of ~400 chars)
handed to the app's router as aiohttp would (a mocked request whose body is the real bytes),
so routing, the edge middleware, decode, limits, the cache, single flight, the router, the
guard, budget accounting, the provider adapter (wire body built, answer parsed and checked),
the answer's encoding, the metrics and the request log line all run. Only the sockets are
missing: the provider's `post` is answered in process with DeepInfra's reply bytes, and the
request log goes to a file. What is left out is what the pass-through pays too (aiohttp's
server and client over sockets), so this is the part of a miss that bench/core.py's ratio is
about. Prints the best of --rounds of --requests each, in µs per request (process CPU time),
less what building the mocked request costs the bench (measured in the same run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bench.harness import BENCH_KEY, BENCH_KEY_ENV, HEADERS, PATH, write_gateway_config
from bench.registry import Figures
from bench.workload import DOCUMENTS_PER_REQUEST, FreshBodies
from gateway.app import create_app
from gateway.config import load_config
from gateway.observability.logs import configure_logging
from gateway.process.server import settle_garbage_collector
from gateway.web.edge import LIVE


class _Body:
    """The request body as aiohttp's StreamReader gives it to the handler; `next` sets the next one."""

    def __init__(self) -> None:
        self._data = b""

    def next(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int = -1) -> bytes:
        data, self._data = self._data, b""
        return data

    def at_eof(self) -> bool:
        return not self._data


def _deepinfra_reply(documents: int) -> bytes:
    """DeepInfra's answer to a call of this many documents (its shape, scores made up)."""
    return orjson.dumps({"scores": [(7 * i % 10) / 10 for i in range(documents)], "input_tokens": 100 * documents,
                         "request_id": None, "inference_status": {"status": "succeeded", "runtime_ms": 20,
                                                                  "cost": 0.0, "tokens_input": 100 * documents}})


_REPLY = _deepinfra_reply(DOCUMENTS_PER_REQUEST)


async def _answer_in_process(url: str, body: bytes, headers: Any, timeout: Any) -> tuple[int, bytes, str | None]:
    return 200, _REPLY, None


def _count_instructions(on: bool) -> None:
    """Under `valgrind --tool=callgrind --instr-atstart=no`, count only the measured requests:
    instructions, unlike seconds, do not move with what else the machine runs."""
    if os.environ.get("MISS_LOGIC_CALLGRIND"):
        subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                       check=True, capture_output=True)


def _template(app: web.Application, body: _Body) -> web.Request:
    """A request whose clones share its mocked connection: mocks are built once, not per request."""
    return make_mocked_request("POST", PATH, headers=HEADERS, app=app, payload=body)  # type: ignore[arg-type]


def log_requests_to(path: str) -> None:
    """The gateway's JSON request log, as `serve` configures it, written to `path`."""
    configure_logging("INFO", "json")
    handler = logging.getLogger().handlers[-1]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(open(path, "w"))  # noqa: SIM115  # open for the run's life


@contextlib.asynccontextmanager
async def started_app(extra_config: str = "") -> AsyncIterator[web.Application]:
    """The app `serve` builds from the bench config (plus `extra_config`'s TOML), started, its
    provider calls answered in process."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[BENCH_KEY_ENV] = BENCH_KEY
        path = write_gateway_config(Path(tmp) / "gateway.toml", 9)
        path.write_text(path.read_text() + extra_config)
        app = create_app(load_config(path))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for client in app[LIVE].current.clients.values():
            client._send = _answer_in_process  # the upstream hop, answered here
        try:
            yield app
        finally:
            await runner.cleanup()


async def measure(requests: int, rounds: int, check: bool, extra_config: str = "") -> list[float]:
    async with started_app(extra_config) as app:
        settle_garbage_collector()
        fresh = FreshBodies(broadcast_query=False)
        payload = _Body()
        template = _template(app, payload)
        results = []
        for _ in range(rounds):
            bodies = fresh.bodies(requests)
            gc.collect()
            _count_instructions(True)
            started = time.process_time()
            for body in bodies:
                payload.next(body)
                response = await app._handle(template.clone())
                if check and (response.status != 200
                              or f"misses={DOCUMENTS_PER_REQUEST}" not in response.headers["X-Rerank-Cache"]):
                    raise RuntimeError(f"not a miss answered: {response.status} {response.headers}")
            results.append((time.process_time() - started) / requests * 1e6)
            _count_instructions(False)
        started = time.process_time()
        for _ in range(requests):  # what the mocked request costs the bench itself
            template.clone()
        overhead = (time.process_time() - started) / requests * 1e6
        return [result - overhead for result in results]


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--log", default="/dev/null", help="where the request log goes (default /dev/null)")
    args = parser.parse_args(argv)
    log_requests_to(args.log)
    results = asyncio.run(measure(args.requests, args.rounds, check=True))
    import gateway
    print(f"{Path(gateway.__file__).parent.parent}: best {min(results):.1f} µs/request, "
          f"median {sorted(results)[len(results) // 2]:.1f} (rounds: {', '.join(f'{r:.0f}' for r in results)})")
    return {"best_us_per_request": min(results), "median_us_per_request": sorted(results)[len(results) // 2]}
