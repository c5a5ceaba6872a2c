"""`serve --workers N`: N gateway processes on one port, the kernel spreading connections.

Each worker is a whole gateway (its own event loop and upstream connections) bound with
SO_REUSEPORT; the supervisor only starts them, passes SIGHUP on (reload), SIGTERM/SIGINT on
(graceful stop), and replaces a worker that dies. Metrics from all workers are merged through
prometheus-client's multiprocess directory, which the supervisor owns.

Each worker reports on a pipe of its own: "ready" once it listens, or "failed <reason>" when it
cannot start, and "reload" when `/admin/reload` reloaded it: the request reached one worker (the
kernel picked it), so the supervisor passes SIGHUP to the others, and every worker serves the
new config within a tick (0.2 s) of the answer. A worker that dies before it served (port taken, bad config, Redis refusing)
would die again however often it is restarted, so the supervisor stops every worker and exits
with that one line. A worker that dies after serving is replaced after a back-off that doubles
with each death; past `MAX_RESTARTS_PER_MINUTE` the supervisor gives up rather than spin.

Workers bind with SO_REUSEPORT, which would also let a second gateway of the same user join the
port and take a share of its traffic. So the supervisor first binds the port itself, without
SO_REUSEPORT: that fails while any other process listens there, and the gateway refuses to start
with one line. (A stranger binding in the moment between that check and the workers' binds is not
caught; one started later is.) The metrics folder the supervisor makes is removed when it exits,
and folders left by supervisors that died without cleaning up are removed when the next one starts.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.observability.metrics import MULTIPROC_DIR_ENV, clear_multiprocess_dir, mark_process_dead

log = logging.getLogger("gateway.workers")

READY = b"ready"
FAILED = b"failed "
RELOADED = b"reload"  # this worker reloaded by /admin/reload: reload the others
STARTUP_FAILED_EXIT = 3  # a worker that could not start; the supervisor stops the gateway

MAX_RESTARTS_PER_MINUTE = 5
_FIRST_BACKOFF_SECONDS = 0.5
_MAX_BACKOFF_SECONDS = 30.0
_TICK_SECONDS = 0.2
_PR_SET_PDEATHSIG = 1
_METRICS_DIR_PREFIX = "rerank-gateway-metrics-"
_OWNED_METRICS_DIR = re.compile(re.escape(_METRICS_DIR_PREFIX) + r"(\d+)-")  # ...-<supervisor pid>-<random>


def _prepare_worker() -> None:
    """In the worker, before exec: a supervisor killed outright must not leave workers behind, and
    a reload forwarded while the worker starts must not kill it (SIGHUP's default): it stays
    blocked, so pending, until the worker's app has its handler (gateway.app)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's own SIGTERM handling still stops its workers


class StartupFailed(Exception):
    """A worker could not start; the message is the one line to show."""


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    report_fd: int  # the supervisor's end of the worker's report pipe
    ready: bool = False
    failure: str | None = None
    reloaded: bool = False  # by /admin/reload, since the supervisor last looked

    def read_reports(self) -> None:
        try:
            data = os.read(self.report_fd, 4096)
        except BlockingIOError:
            return
        for line in data.splitlines():
            if line == READY:
                self.ready = True
            elif line == RELOADED:
                self.reloaded = True
            elif line.startswith(FAILED):
                self.failure = line[len(FAILED):].decode("utf-8", "replace")

    def close(self) -> None:
        os.close(self.report_fd)


@dataclass
class _Restarts:
    """When dead workers may be replaced: a doubling back-off, and a ceiling per minute."""

    deaths: deque[float] = field(default_factory=deque)
    backoff: float = _FIRST_BACKOFF_SECONDS

    def next_start(self, now: float) -> float:
        while self.deaths and now - self.deaths[0] > 60:
            self.deaths.popleft()
        if not self.deaths:
            self.backoff = _FIRST_BACKOFF_SECONDS  # quiet for a minute: start over
        self.deaths.append(now)
        if len(self.deaths) > MAX_RESTARTS_PER_MINUTE:
            raise StartupFailed(f"workers died {len(self.deaths)} times within a minute; giving up")
        delay, self.backoff = self.backoff, min(self.backoff * 2, _MAX_BACKOFF_SECONDS)
        return now + delay


def claim_port(host: str, port: int) -> None:
    """StartupFailed unless host:port is free: bound without SO_REUSEPORT, so no listener may hold it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the workers do: TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError as exc:
            # The words a single `serve` refused on a taken port says (aiohttp's bind error).
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
            raise StartupFailed(f"cannot serve on http://{host}:{port}: {reason}") from None


def remove_stale_metrics_dirs(parent: str) -> None:
    """Metrics folders of supervisors that are gone (killed before they could remove their own)."""
    for entry in os.scandir(parent):
        owner = _OWNED_METRICS_DIR.match(entry.name)
        if owner and entry.is_dir(follow_symlinks=False) and not _process_alive(int(owner.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class Supervisor:
    def __init__(self, worker_args: Sequence[str], count: int, grace_seconds: float, host: str, port: int) -> None:
        self._worker_args = list(worker_args)
        self._count = count
        self._grace = grace_seconds
        self._host, self._port = host, port
        self._address = f"http://{host}:{port}"
        self._workers: list[_Worker | None] = []
        self._start_at: dict[int, float] = {}  # slot -> when its replacement may start
        self._restarts = _Restarts()
        self._stopping = False
        self._own_metrics_dir = MULTIPROC_DIR_ENV not in os.environ  # else whoever set it owns it
        self._metrics_dir = os.environ.get(MULTIPROC_DIR_ENV, "")

    def run(self) -> int:
        """0 after a graceful stop; 1 when the workers could not start or kept dying (the line is printed)."""
        try:
            claim_port(self._host, self._port)
        except StartupFailed as failure:
            print(f"rerank-gateway: {failure}", file=sys.stderr)
            return 1
        if self._own_metrics_dir:
            remove_stale_metrics_dirs(tempfile.gettempdir())
            self._metrics_dir = tempfile.mkdtemp(prefix=f"{_METRICS_DIR_PREFIX}{os.getpid()}-")
        try:
            return self._supervise()
        finally:
            if self._own_metrics_dir:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _supervise(self) -> int:
        clear_multiprocess_dir(self._metrics_dir)
        # The stop handler only notes the stop, and this thread sends it on: sent from the handler,
        # a SIGTERM that came while the workers were being started reached only those already in
        # the list (none, while it was being built), and the rest ran out the grace period.
        signal.signal(signal.SIGTERM, self._note_stop)
        signal.signal(signal.SIGINT, self._note_stop)
        signal.signal(signal.SIGHUP, self._forward_reload)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked by `serve` while it started
        try:
            self._start_workers()
            while not self._stopping:
                time.sleep(_TICK_SECONDS)
                self._look_after_workers()
        except StartupFailed as failure:
            self._stop_workers()
            self._wait_for_workers()
            print(f"rerank-gateway: {failure}", file=sys.stderr)
            return 1
        self._stop_workers()
        return self._wait_for_workers()

    def _start_workers(self) -> None:
        for _ in range(self._count):
            if self._stopping:
                break  # stopped while starting: no more workers, the started ones get the stop
            self._workers.append(self._spawn())
        log.info("supervising %d workers", len(self._workers))

    def _spawn(self) -> _Worker:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        env = {**os.environ, MULTIPROC_DIR_ENV: self._metrics_dir}
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", *self._worker_args, "--report-fd", str(write_fd)],
                env=env, preexec_fn=_prepare_worker, pass_fds=(write_fd,),
            )
        finally:
            os.close(write_fd)
        return _Worker(process, read_fd)

    def _look_after_workers(self) -> None:
        now = time.monotonic()
        for slot, worker in enumerate(self._workers):
            if worker is None:
                if now >= self._start_at[slot] and not self._stopping:
                    self._workers[slot] = self._spawn()
                continue
            worker.read_reports()
            if worker.reloaded:
                worker.reloaded = False
                self._reload_all_but(worker)
            if worker.process.poll() is None or self._stopping:
                continue
            worker.read_reports()  # what it wrote just before it exited
            worker.close()
            mark_process_dead(worker.process.pid, self._metrics_dir)
            if not worker.ready:
                reason = worker.failure or (
                    f"cannot serve on {self._address}: a worker exited with status {worker.process.returncode} before serving"
                )
                raise StartupFailed(reason)
            log.error("worker %d exited with %s after serving; replacing it", worker.process.pid, worker.process.returncode)
            self._workers[slot] = None
            self._start_at[slot] = self._restarts.next_start(now)

    def _forward_reload(self, signum: int, frame: object) -> None:
        for worker in self._live_workers():
            worker.process.send_signal(signal.SIGHUP)

    def _reload_all_but(self, reloaded: _Worker) -> None:
        others = [worker for worker in self._live_workers() if worker is not reloaded]
        log.info("worker %d reloaded its config by /admin/reload; reloading %d more", reloaded.process.pid, len(others))
        for worker in others:
            worker.process.send_signal(signal.SIGHUP)

    def _note_stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _stop_workers(self) -> None:
        self._stopping = True
        for worker in self._live_workers():
            worker.process.send_signal(signal.SIGTERM)

    def _live_workers(self) -> list[_Worker]:
        return [w for w in self._workers if w is not None and w.process.poll() is None]

    def _wait_for_workers(self) -> int:
        deadline = time.monotonic() + self._grace + 5
        for worker in self._workers:
            if worker is None:
                continue
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            mark_process_dead(worker.process.pid, self._metrics_dir)
        return 0
