"""A private redis-server on a free port, started and stopped by the tests themselves.

Never the machine's shared Redis on 6379: tests flush and kill what they start.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from tests.support.processes import free_port

REDIS_SERVER = shutil.which("redis-server")
needs_redis_server = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server binary not found (apt-get install redis-server; .ci/run installs it)"
)
Test = TypeVar("Test", bound=Callable[..., object])


def own_redis_server(test: Test) -> Test:
    """For a test that starts, stops or kills its own RedisServer: marked `redis`, and skipped,
    saying why, where redis-server is not installed."""
    return pytest.mark.redis(needs_redis_server(test))


# The contract suites' backends that start something, marked by what: a redis-server, or the
# 3-node cluster (tests/support/redis_cluster.py), so that `-m "not cluster"` leaves the cluster out.
REDIS = pytest.param("redis", marks=pytest.mark.redis)
CLUSTER = pytest.param("redis-cluster", marks=pytest.mark.cluster)


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, extra_args: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.extra_args = extra_args or []
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, password: str | None = None) -> None:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "no", *self.extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, password=password, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError as exc:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from exc
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)
