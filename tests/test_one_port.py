"""One gateway per port: `serve` and `serve --workers N` refuse a port another process holds,
and the supervisor's metrics folder does not outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.config import gateway_config, local_url, write_config
from tests.support.processes import REPO, free_port, running

pytestmark = [pytest.mark.processes, pytest.mark.slow]

REFUSE_WITHIN_SECONDS = 30.0  # a bound for a hung test, not a performance claim


def start(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway ARGS` to its end: a refused start must end on its own."""
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=REFUSE_WITHIN_SECONDS)


def metrics_dirs(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("rerank-gateway-metrics-"))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config.toml", gateway_config(local_url(free_port())))


@pytest.mark.parametrize("second", [["--workers", "2"], ["--workers", "1"]], ids=["workers", "single"])
def test_a_port_held_by_a_workers_gateway_is_refused(tmp_path: Path, config: Path, redis_url: str, second: list[str]):
    port = free_port()
    env = {"EMULATOR_KEY": "k", "REDIS_URL": redis_url, "TMPDIR": str(tmp_path)}
    serve = ["serve", "--config", str(config), "--port", str(port)]
    with running([*serve, "--workers", "2"], port, env=env) as first:
        refused = start([*serve, *second], env)
        assert refused.returncode == 1, refused.stderr
        lines = [line for line in refused.stderr.splitlines() if line.startswith("rerank-gateway: ")]
        assert len(lines) == 1 and f"cannot serve on http://127.0.0.1:{port}" in lines[0], refused.stderr
        assert "Traceback" not in refused.stderr
        assert first.poll() is None  # the gateway that held the port still runs


def test_workers_refuse_a_port_a_single_gateway_holds(tmp_path: Path, config: Path):
    port = free_port()
    env = {"EMULATOR_KEY": "k", "TMPDIR": str(tmp_path)}
    serve = ["serve", "--config", str(config), "--port", str(port)]
    with running(serve, port, env=env):
        refused = start([*serve, "--workers", "2"], env)
    assert refused.returncode == 1
    assert f"cannot serve on http://127.0.0.1:{port}: address already in use" in refused.stderr
    assert metrics_dirs(tmp_path) == []  # refused before it made one


def test_the_metrics_folder_is_removed_at_exit_and_stale_ones_at_start(tmp_path: Path, config: Path, redis_url: str):
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f"rerank-gateway-metrics-{gone.pid}-abc123"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"\0" * 16)
    foreign = tmp_path / "rerank-gateway-metrics-other"  # not named by a supervisor's pid: not ours to judge
    foreign.mkdir()
    port = free_port()
    env = {"EMULATOR_KEY": "k", "REDIS_URL": redis_url, "TMPDIR": str(tmp_path)}
    with running(["serve", "--config", str(config), "--port", str(port), "--workers", "2"], port, env=env) as supervisor:
        own = [name for name in metrics_dirs(tmp_path) if name.startswith(f"rerank-gateway-metrics-{supervisor.pid}-")]
        assert len(own) == 1
        assert stale.name not in metrics_dirs(tmp_path)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=REFUSE_WITHIN_SECONDS) == 0
    assert metrics_dirs(tmp_path) == [foreign.name]
