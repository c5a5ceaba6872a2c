"""Starting the gateway and the emulator as real processes, the way ops and CI run them."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

REPO = Path(__file__).parents[2]
STARTUP_SECONDS = 15.0


# Ports already handed out in this test session. The kernel may offer a port again as soon as
# its probe socket is closed (two calls in a row named one port about once in 10,000 tries here),
# and then a gateway fails to bind while its readiness check reaches the emulator listening there.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on TCP `port` (Linux /proc), e.g. one worker of several."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False  # gone, or not started yet
    inodes = set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed since the listing (the listing's own fd, when pid is this process)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
                if local_port == port and state == "0A" and inode in inodes:  # 0A: LISTEN
                    return True
    return False


class LineLog:
    """The lines a process writes to a pipe, read by a thread as they come, so a test waits for a line."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self.lines.append(line)  # list.append is atomic: the test thread reads a consistent list
        except (ValueError, OSError):
            pass  # the pipe was closed under us once the process was stopped: nothing more to read

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = STARTUP_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}: {process.stderr.read() if process.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {port} within {seconds}s")


@contextmanager
def running(
    args: list[str], port: int, env: dict[str, str] | None = None, cwd: Path = REPO
) -> Iterator[subprocess.Popen]:
    """`python -m gateway ARGS` until the block ends; stopped with SIGTERM, then killed.

    `cwd`: the source tree to run (a bench runs an older checkout with PYTHONPATH set to it).
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, process)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _keep_output_close_pipes(process)


def _keep_output_close_pipes(process: subprocess.Popen) -> None:
    """What the stopped process wrote stays readable (tests read its log after the block), from memory.

    The pipes themselves are closed here: left to the garbage collector they are a ResourceWarning.
    """
    for name in ("stdout", "stderr"):
        stream = getattr(process, name)
        if stream is not None:
            rest = stream.read()  # the process is gone: up to end of file
            stream.close()
            setattr(process, name, io.StringIO(rest))


def gateway_toml(
    emulator_port: int, fallback: str = '["deepinfra", "fireworks"]', extra: str = "", server: str = "",
    probe_interval_seconds: float = 0,
) -> str:
    return f"""
[server]
default_model = "qwen3-reranker-8b"
{server}

[models."qwen3-reranker-8b"]
aliases = ["Qwen/Qwen3-Reranker-8B"]
fallback = {fallback}
quality = {{ probe_interval_seconds = {probe_interval_seconds:g} }}  # probes are real calls the emulator counts

[providers.deepinfra]
kind = "deepinfra"
base_url = "http://127.0.0.1:{emulator_port}"
model = "Qwen/Qwen3-Reranker-8B"
api_key_env = "EMULATOR_KEY"
price_per_million_tokens = 0.05

[providers.fireworks]
kind = "fireworks"
base_url = "http://127.0.0.1:{emulator_port}"
model = "accounts/fireworks/models/qwen3-reranker-8b"
api_key_env = "EMULATOR_KEY"
price_per_million_tokens = 0.10
{extra}
"""
