"""`serve --workers N`: several processes on one port sharing Redis, metrics from all of them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.process.workers import Supervisor, _Worker
from tests.support.config import MODEL, gateway_config, local_url, write_config
from tests.support.polling import eventually, eventually_sync
from tests.support.processes import (
    REPO,
    GatewayProcess,
    LineLog,
    free_port,
    hup_until_listening,
    listens_on,
    running,
)

pytestmark = [pytest.mark.processes, pytest.mark.slow]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def requests_total(metrics_text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "rerank_gateway_requests_total":
                total += sample.value
    return total


def listening_workers(supervisor_pid: int, port: int, gone: int | None = None) -> bool:
    """Whether the supervisor has two workers, none of them `gone`, each with its own socket listening on `port`."""
    workers = children_of(supervisor_pid)
    return len(workers) == 2 and gone not in workers and all(listens_on(pid, port) for pid in workers)


async def two_workers_listening(supervisor, port: int, gone: int | None = None) -> list[int]:
    # A look reads /proc/net/tcp: not too often.
    await eventually(lambda: listening_workers(supervisor.pid, port, gone), what="two workers listening", every=0.05)
    return children_of(supervisor.pid)


async def test_two_workers_share_one_port_redis_and_metrics(tmp_path, redis_url):
    emulator_port, port = free_port(), free_port()
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(emulator_port)))
    env = {"EMULATOR_KEY": "k", "REDIS_URL": redis_url}
    with running(["emulate", "--port", str(emulator_port)], emulator_port), \
         running(["serve", "--config", str(config), "--port", str(port), "--workers", "2"], port, env=env) as supervisor:
        workers = await two_workers_listening(supervisor, port)
        body = {"query": "shared question", "documents": ["a passage", "another passage"]}
        providers = []
        for _ in range(30):  # a new connection each time, so the kernel spreads them over workers
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
                session.post(f"http://127.0.0.1:{port}/v1/rerank", json=body) as response,
            ):
                assert response.status == 200
                providers.append(response.headers["X-Rerank-Provider"])
        # One upstream call; every other answer came from the Redis cache, whichever worker served it.
        assert providers.count("deepinfra") == 1 and providers.count("cache") == 29

        async def all_thirty_counted() -> bool:
            # All workers, not just the one that answers the scrape; the other's updates reach
            # its metrics file within 50 ms (observability/deferred.py).
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
                return requests_total(await response.text()) == 30

        await eventually(all_thirty_counted, what="the scrape counting every worker's 30 requests")

        os.kill(workers[0], signal.SIGKILL)  # a worker dies: the supervisor starts another
        await two_workers_listening(supervisor, port, gone=workers[0])
        async with aiohttp.ClientSession() as session, session.post(f"http://127.0.0.1:{port}/v1/rerank", json=body) as response:
            assert response.status == 200

        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(supervisor.wait, 30) == 0
    assert all(not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
               for pid in workers)


def test_more_workers_than_one_without_redis_says_budgets_are_per_worker(tmp_path):
    import subprocess
    import sys

    from tests.support.processes import REPO

    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(9)))
    port = free_port()
    with subprocess.Popen(  # leaving the block closes the pipe and waits for the process
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port), "--workers", "2"],
        cwd=REPO, env={**os.environ, "EMULATOR_KEY": "k", "REDIS_URL": ""}, stderr=subprocess.PIPE, text=True,
    ) as process:
        assert process.stderr is not None
        stderr = LineLog(process.stderr)
        try:
            eventually_sync(lambda: stderr.count("budgets hold per worker") > 0, what="the per-worker budgets warning")
        finally:
            process.terminate()


def test_workers_must_be_positive(tmp_path):
    import subprocess
    import sys

    from tests.support.processes import REPO

    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(9)))
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "0"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--workers" in result.stderr


def _one_line_errors(stderr: str) -> list[str]:
    """stderr without the JSON log lines the workers write while starting."""
    return [line for line in stderr.splitlines() if line and not line.startswith("{")]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_port_stops_the_gateway_with_one_line(tmp_path, workers):
    """A worker that cannot bind would fail again on every restart: one line, a non-zero exit, no traceback."""
    import socket
    import subprocess
    import sys

    from tests.support.processes import REPO

    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(9)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port), "--workers", workers],
            cwd=REPO, env={**os.environ, "EMULATOR_KEY": "k", "REDIS_URL": "redis://127.0.0.1:1/0"},
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1
    assert _one_line_errors(result.stderr) == [f"rerank-gateway: cannot serve on http://127.0.0.1:{port}: address already in use"]
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30  # it gave up; it did not restart the workers forever


def test_the_emulator_on_a_taken_port_says_so_in_one_line():
    import socket
    import subprocess
    import sys

    from tests.support.processes import REPO

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "gateway", "emulate", "--port", str(port)],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"rerank-gateway: cannot serve on http://127.0.0.1:{port}: address already in use"]


def test_workers_that_keep_dying_are_replaced_with_backoff_then_given_up_on():
    from gateway.process.workers import MAX_RESTARTS_PER_MINUTE, StartupFailed, _Restarts

    restarts = _Restarts()
    now = 1000.0
    delays = []
    for _ in range(MAX_RESTARTS_PER_MINUTE):
        delays.append(restarts.next_start(now) - now)
        now += 1.0
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0]
    with pytest.raises(StartupFailed, match="died 6 times within a minute"):
        restarts.next_start(now)

    calm = _Restarts()
    calm.next_start(0.0)
    calm.next_start(1.0)
    assert calm.next_start(200.0) == 200.5  # a quiet minute starts the back-off over


async def test_admin_reload_reaches_every_worker(tmp_path, redis_url):
    """/admin/reload lands on one worker (the kernel picks it); the others follow through the supervisor."""
    emulator_port, port = free_port(), free_port()
    config = tmp_path / "config.toml"
    server = {"admin_key_env": "ADMIN_KEY", "reload_poll_seconds": 0}  # no file watcher: only the admin call
    write_config(config, gateway_config(local_url(emulator_port), ["deepinfra", "fireworks"], server=server))
    env = {"EMULATOR_KEY": "k", "REDIS_URL": redis_url, "ADMIN_KEY": "admin-secret"}

    async def providers_on_fresh_connections(first: int) -> list[str]:
        seen = []
        for i in range(first, first + 24):  # a new connection each time, so the kernel spreads them over workers
            body = {"query": f"question {i}", "documents": [f"passage {i}", "another passage"]}
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
                session.post(f"http://127.0.0.1:{port}/v1/rerank", json=body) as response,
            ):
                assert response.status == 200
                seen.append(response.headers["X-Rerank-Provider"])
        return seen

    with running(["emulate", "--port", str(emulator_port)], emulator_port), \
         running(["serve", "--config", str(config), "--port", str(port), "--workers", "2"], port, env=env) as supervisor:
        log = supervisor.log
        await two_workers_listening(supervisor, port)
        assert set(await providers_on_fresh_connections(0)) == {"deepinfra"}

        write_config(config, gateway_config(local_url(emulator_port), ["fireworks", "deepinfra"], server=server))
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/admin/reload", headers={"Authorization": "Bearer admin-secret"}) as answer,
        ):
            assert answer.status == 200, await answer.text()
        # The worker that answered reloads, tells the supervisor, which sends the other one SIGHUP:
        # each logs the reload once it serves the new config.
        await eventually(lambda: log.count("config reloaded from") == 2, what="both workers reloaded")
        assert set(await providers_on_fresh_connections(100)) == {"fireworks"}
        assert len(children_of(supervisor.pid)) == 2  # the same two workers, reloaded, not restarted


class _TerminatedWhileStarting(Supervisor):
    """A supervisor sent SIGTERM just after it started its first worker, the second yet to come:
    the moment a `kill` or a service manager's stop can hit while a gateway starts, made certain."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.started: list[subprocess.Popen[bytes]] = []

    def _spawn(self) -> _Worker:
        worker = super()._spawn()
        self.started.append(worker.process)
        if len(self.started) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs in this thread, before _spawn returns
        return worker


@pytest.fixture
def own_signal_handlers() -> Iterator[None]:
    """The supervisor installs its handlers in this process: pytest's come back afterwards."""
    kept = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for signum, handler in kept.items():
        signal.signal(signum, handler)


def test_a_sigterm_while_workers_start_stops_the_started_ones_within_the_grace(tmp_path, own_signal_handlers):
    config, port, grace = tmp_path / "config.toml", free_port(), 30.0
    write_config(config, gateway_config(local_url(9)))
    args = ["--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--reuse-port", "--config", str(config)]
    supervisor = _TerminatedWhileStarting(args, 2, grace, "127.0.0.1", port)
    started = time.monotonic()
    assert supervisor.run() == 0
    # Stopped by that SIGTERM (it kills a worker still starting; one already serving exits with
    # 0), not killed when the grace ran out, which is what a worker the SIGTERM missed waits for.
    assert {process.returncode for process in supervisor.started} <= {-signal.SIGTERM, 0}
    assert time.monotonic() - started < grace  # a generous bound: a stop takes well under a second


async def test_reloads_asked_while_workers_start_do_not_stop_the_gateway(tmp_path):
    """The supervisor forwards SIGHUP to every worker, started or starting; a starting one used
    to die of it (SIGHUP's default) and, having never served, took the whole gateway down."""
    emulator_port, port = free_port(), free_port()
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(emulator_port)))
    env = {**os.environ, "EMULATOR_KEY": "k"}
    with running(["emulate", "--port", str(emulator_port)], emulator_port):
        supervisor = GatewayProcess(["serve", "--config", str(config), "--port", str(port), "--workers", "2"], env, REPO)
        try:
            # From the line the supervisor logs once both workers were started (its handler is in place).
            assert hup_until_listening(supervisor, port, after_line="supervising 2 workers") > 0
            workers = await two_workers_listening(supervisor, port)
            # Each worker reloads once it can (the file did not change: "nothing to do").
            await eventually(lambda: supervisor.log.count("config reload") >= 2, what="each worker reloading once it serves")
            async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{port}/v1/rerank", json={"query": "q", "documents": ["a", "b"]}
            ) as response:
                assert response.status == 200, await response.text()
            assert supervisor.poll() is None and sorted(children_of(supervisor.pid)) == sorted(workers)
        finally:
            supervisor.stop()


async def test_with_two_workers_the_second_identical_request_right_after_start_is_a_hit(tmp_path, redis_url):
    """Before a provider's first verdict its scores go to a group marked `?`; the pass renames the
    group. Each worker learns of the verdict on its own, so a pair scored by one worker before
    (or after) its pass was missed by the other, asked right after: twice paid in the first
    seconds. Every second ask of a pair is a hit now, whichever worker answers and whenever the
    verdicts arrive."""
    emulator_port, port = free_port(), free_port()
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(emulator_port), fallback=["deepinfra"],
                                        models={MODEL: {"quality": {"probe_interval_seconds": 3600}}}))
    env = {"EMULATOR_KEY": "k", "REDIS_URL": redis_url}
    # Every call takes 0.2-0.5 s, the canary's too: requests come before, between and after the
    # workers' verdicts (the one that probes learns first; the other reads it within a second).
    emulate = ["emulate", "--port", str(emulator_port), "--latency-ms", "200", "--jitter-ms", "300"]
    with running(emulate, emulator_port), \
         running(["serve", "--config", str(config), "--port", str(port), "--workers", "2"], port, env=env) as supervisor:
        await two_workers_listening(supervisor, port)
        seconds: list[str] = []
        started = time.monotonic()
        for asked in range(16):
            body = {"query": f"question {asked}", "documents": ["a passage", "another passage"]}
            answers = []
            for _ in range(2):
                async with (
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
                    session.post(f"http://127.0.0.1:{port}/v1/rerank", json=body) as response,
                ):
                    assert response.status == 200
                    answers.append(response.headers["X-Rerank-Cache"])
            assert answers[0] == "hits=0; misses=2", answers
            seconds.append(answers[1])
        print(f"\n16 pairs asked twice over {time.monotonic() - started:.1f} s")
        assert seconds == ["hits=2; misses=0"] * 16, seconds

        async def both_passed() -> bool:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as response:
                return (await response.json())["quality"][MODEL]["deepinfra"]["state"] == "passing"

        await eventually(both_passed, what="the verdict")  # the run did span it
