"""`serve --workers N`: N gateway processes on one port, the kernel spreading connections.

Each worker is a whole gateway (its own event loop and upstream sessions) bound with
SO_REUSEPORT; the supervisor only starts them, passes SIGHUP on (reload), SIGTERM/SIGINT on
(graceful stop), and starts a worker again if one dies. Metrics from all workers are merged
through prometheus-client's multiprocess directory, which the supervisor owns.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from gateway.observability.metrics import MULTIPROC_DIR_ENV, clear_multiprocess_dir, mark_process_dead

log = logging.getLogger("gateway.workers")

_RESTART_PAUSE_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1  # a worker that dies at start-up must not spin the supervisor


def _die_with_parent() -> None:
    """In the worker, before exec: a supervisor killed outright must not leave workers behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's own SIGTERM handling still stops its workers


class Supervisor:
    def __init__(self, worker_args: Sequence[str], count: int, grace_seconds: float) -> None:
        self._worker_args = list(worker_args)
        self._count = count
        self._grace = grace_seconds
        self._workers: list[subprocess.Popen] = []
        self._stopping = False
        self._metrics_dir = os.environ.get(MULTIPROC_DIR_ENV) or tempfile.mkdtemp(prefix="rerank-gateway-metrics-")

    def run(self) -> int:
        clear_multiprocess_dir(self._metrics_dir)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._forward_reload)
        self._workers = [self._spawn() for _ in range(self._count)]
        log.info("supervising %d workers: %s", self._count, ", ".join(str(w.pid) for w in self._workers))
        while not self._stopping:
            time.sleep(0.2)
            self._replace_dead_workers()
        return self._wait_for_workers()

    def _spawn(self) -> subprocess.Popen:
        env = {**os.environ, MULTIPROC_DIR_ENV: self._metrics_dir}
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", *self._worker_args], env=env, preexec_fn=_die_with_parent
        )

    def _replace_dead_workers(self) -> None:
        for index, worker in enumerate(self._workers):
            if worker.poll() is None or self._stopping:
                continue
            log.error("worker %d exited with %s; starting another", worker.pid, worker.returncode)
            mark_process_dead(worker.pid, self._metrics_dir)
            time.sleep(_RESTART_PAUSE_SECONDS)
            self._workers[index] = self._spawn()

    def _forward_reload(self, signum: int, frame: object) -> None:
        for worker in self._workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGHUP)

    def _stop(self, signum: int, frame: object) -> None:
        self._stopping = True
        for worker in self._workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    def _wait_for_workers(self) -> int:
        deadline = time.monotonic() + self._grace + 5
        for worker in self._workers:
            try:
                worker.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            mark_process_dead(worker.pid, self._metrics_dir)
        return 0
