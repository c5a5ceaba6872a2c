"""A private three-node Redis Cluster on loopback, started and stopped by the tests themselves.

Never the machine's shared Redis on 6379: every node listens on a free port of 127.0.0.1 and
keeps its cluster state under the test's temporary directory. The fixtures are a plugin
(`pytest_plugins = ["tests.support.redis_cluster"]` in the modules that use them), so one cluster
serves the whole session whichever of those modules run.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.processes import free_port

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
MISSING = (
    "redis-server binary not found" if REDIS_SERVER is None
    else "redis-cli binary not found" if REDIS_CLI is None
    else None
)
STARTUP_SECONDS = 20.0


class RedisCluster:
    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        self.workdir = workdir
        # The cluster bus port is given too: the default, port + 10000, may not exist above 55535.
        self.ports = [(free_port(), free_port()) for _ in range(nodes)]
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port, _ in self.ports)

    def start(self) -> None:
        assert REDIS_SERVER is not None and REDIS_CLI is not None
        try:
            for port, bus_port in self.ports:
                self.processes.append(subprocess.Popen(
                    [REDIS_SERVER, "--port", str(port), "--cluster-port", str(bus_port), "--bind", "127.0.0.1",
                     "--cluster-enabled", "yes", "--cluster-config-file", str(self.workdir / f"nodes-{port}.conf"),
                     "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
                     "--dir", str(self.workdir), "--protected-mode", "no"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ))
            for node in self.nodes():
                self._wait(node, lambda client: client.ping())
            subprocess.run(
                [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{port}" for port, _ in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, capture_output=True, timeout=STARTUP_SECONDS,
            )
            for node in self.nodes():
                self._wait(node, lambda client: client.cluster("info")["cluster_state"] == "ok")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()
        self.processes = []

    def nodes(self) -> list[redis.Redis]:
        """A plain client per node: for looking at what each node holds, not for routing."""
        return [redis.Redis(port=port, socket_connect_timeout=0.5) for port, _ in self.ports]

    def flush(self) -> None:
        for node in self.nodes():
            with node:
                node.flushall()

    def keys_per_node(self) -> list[list[bytes]]:
        found = []
        for node in self.nodes():
            with node:
                found.append([key if isinstance(key, bytes) else key.encode() for key in node.keys("*")])
        return found

    def _wait(self, node: redis.Redis, ready) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        with node:
            while True:
                try:
                    if ready(node):
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline or any(process.poll() is not None for process in self.processes):
                    raise RuntimeError(f"redis cluster node {node.get_connection_kwargs()['port']} did not get ready")
                time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One private three-node cluster for the session."""
    if MISSING is not None:
        pytest.skip(f"{MISSING} (apt-get install redis-server redis-tools; .ci/run installs them)")
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """The session's cluster, emptied for this test: `redis+cluster://` with every node."""
    redis_cluster.flush()
    return redis_cluster.url
