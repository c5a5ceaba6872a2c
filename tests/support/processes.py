"""Starting the gateway and the emulator as real processes, the way ops and CI run them."""

from __future__ import annotations

import os
import signal
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


def free_port() -> int:
    """A port for a server in another process that must be told its port before it starts.

    A server started in this process binds port 0 itself and reports the port it got (aiohttp's
    TestServer does; tests/support/hung_server.py and the scorer of embedding_reranker.py too): no
    race. These cannot: redis-server (`--port 0` turns TCP off) and `rerank-gateway serve|emulate`
    (with `--port 0` it binds a port but logs `:0`, and workers on one port need it up front).

    A port that was only bound and closed can be taken by anyone before the server binds it (the
    kernel offered one twice in a row about once in 10,000 calls here). So the port is left in
    TIME_WAIT for 60 s, as Yelp's ephemeral-port-reserve does: connected to, and closed by the
    accepting side first. Until then the kernel gives it to no bind(0) and to no outgoing connection,
    while a server that binds it by number with SO_REUSEADDR (redis-server, asyncio's create_server,
    so the gateway and the emulator) gets it.
    """
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        address = listener.getsockname()
        with socket.create_connection(address):
            accepted, _ = listener.accept()
            accepted.close()  # the side that closes first keeps the port in TIME_WAIT
    port: int = address[1]
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
    """The lines a process writes to a pipe, read by a thread as they come, so a test waits for a line.

    Read as they come, too, so that the pipe never fills: a pipe nobody reads holds 64 KiB (Linux),
    and a process writing to a full one blocks, a gateway at its next log line.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._stream = stream
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self.lines.append(line)  # list.append is atomic: the test thread reads a consistent list
        except (ValueError, OSError):
            pass  # the pipe was closed under us once the process was stopped: nothing more to read

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    def text(self) -> str:
        return "".join(list(self.lines))

    def tail(self, lines: int = 40) -> str:
        return "".join(list(self.lines)[-lines:])

    def close(self, seconds: float = 10.0) -> None:
        """Once the writer is gone: what it wrote last read to end of file, then the pipe closed.

        A pipe still open after `seconds` (a child of the process, left running, holds it) stays
        open: closed under the reader, its last lines would be lost.
        """
        self._reader.join(seconds)
        if not self._reader.is_alive():
            self._stream.close()  # left to the garbage collector it is a ResourceWarning


class GatewayProcess(subprocess.Popen[str]):
    """`python -m gateway ARGS`, its stderr (`log`) and stdout (`output`) each read by a LineLog.

    The LineLogs own the pipes: read `log`, not `stderr`, which is closed once the process is stopped.
    """

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        super().__init__([sys.executable, "-m", "gateway", *args], cwd=cwd, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.stdout is not None and self.stderr is not None
        self.log = LineLog(self.stderr)
        self.output = LineLog(self.stdout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; then everything it wrote read, and its pipes closed."""
        self.terminate()
        try:
            self.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait()
        self.log.close()
        self.output.close()


def hup_until_listening(process: GatewayProcess, port: int, after_line: str, every: float = 0.02) -> int:
    """SIGHUP `process` every `every` seconds from its first log line containing `after_line` until
    it listens on `port`: a reload asked again and again while it starts. How many were sent."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while not process.log.count(after_line):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no {after_line!r} line: {process.log.tail()}")
        time.sleep(0.01)
    sent = 0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} after {sent} SIGHUPs: {process.log.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return sent
        except OSError:
            process.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(every)
    raise TimeoutError(f"nothing listened on port {port} within {STARTUP_SECONDS}s")


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = STARTUP_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}: {_last_words(process)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {port} within {seconds}s")


def _last_words(exited: subprocess.Popen) -> str:
    if isinstance(exited, GatewayProcess):
        exited.log.close()  # read to the end: the reason is the last line
        return exited.log.tail()
    return exited.stderr.read() if exited.stderr else ""


@contextmanager
def running(
    args: list[str], port: int, env: dict[str, str] | None = None, cwd: Path = REPO
) -> Iterator[GatewayProcess]:
    """`python -m gateway ARGS` until the block ends; stopped with SIGTERM, then killed.

    What it logs stays in `.log` after the block. `cwd`: the source tree to run (a bench runs an
    older checkout with PYTHONPATH set to it).
    """
    process = GatewayProcess(args, {**os.environ, **(env or {})}, cwd)
    try:
        wait_for_port(port, process)
        yield process
    finally:
        process.stop()

