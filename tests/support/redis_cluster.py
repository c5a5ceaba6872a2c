"""Private Redis Clusters on loopback, started and stopped by the tests themselves.

Never the machine's shared Redis on 6379: every node listens on a free port of 127.0.0.1 and
keeps its cluster state under the test's temporary directory. The fixtures are a plugin
(`pytest_plugins = ["tests.support.redis_cluster"]` in the modules that use them):
`redis_cluster`, three masters for the whole session whichever of those modules run, and
`redis_failover_cluster`, three masters with a replica each, new for every test, whose masters
a test may kill (`cluster-node-timeout` 2 s, so a replica takes over a few seconds later).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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
    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 0, extra_args: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.replicas = replicas
        self.extra_args = list(extra_args)
        # The cluster bus port is given too: the default, port + 10000, may not exist above 55535.
        self.ports = [(free_port(), free_port()) for _ in range(masters * (1 + replicas))]
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
                     "--dir", str(self.workdir), "--protected-mode", "no", *self.extra_args],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ))
            for node in self.nodes():
                self._wait(node, lambda client: client.ping())
            subprocess.run(
                [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{port}" for port, _ in self.ports),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True, capture_output=True, timeout=STARTUP_SECONDS,
            )
            for node in self.nodes():
                self._wait(node, _formed)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()
        self.processes = []

    def kill(self, port: int) -> None:
        """SIGKILL the node on this port: no goodbye to its clients or to the other nodes."""
        process = self.processes[[node_port for node_port, _ in self.ports].index(port)]
        process.kill()
        process.wait()

    def shards(self) -> list[tuple[int, list[int]]]:
        """(master port, its replicas' ports) per shard, as a live node reports them."""
        for port, _ in self.ports:
            try:
                with redis.Redis(port=port, socket_connect_timeout=0.5) as node:
                    layout = node.execute_command("CLUSTER", "SHARDS")
            except redis.RedisError:
                continue
            shards = []
            for shard in layout:
                nodes = _pairs(shard)[b"nodes"]
                described = [_pairs(node) for node in nodes]
                master = [int(n[b"port"]) for n in described if n[b"role"] == b"master" and n[b"health"] == b"online"]
                replicas = [int(n[b"port"]) for n in described if n[b"role"] == b"replica"]
                if master and _pairs(shard)[b"slots"]:
                    shards.append((master[0], replicas))
            return shards
        raise RuntimeError("no node of the cluster answered CLUSTER SHARDS")

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


def _formed(client: redis.Redis) -> bool:
    """The cluster is ok and, on a replica, the link to its master is up (its data is copied)."""
    if client.cluster("info")["cluster_state"] != "ok":
        return False
    info = client.info("replication")
    return info["role"] == "master" or info.get("master_link_status") == "up"


def _pairs(flat: Any) -> dict[bytes, Any]:
    """CLUSTER SHARDS answers [name, value, name, value, ...] (RESP2)."""
    if isinstance(flat, dict):
        return {key if isinstance(key, bytes) else str(key).encode(): value for key, value in flat.items()}
    return {flat[i] if isinstance(flat[i], bytes) else str(flat[i]).encode(): flat[i + 1] for i in range(0, len(flat), 2)}


@pytest.fixture
def redis_failover_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """Three masters with a replica each, for one test: it may kill masters.

    `cluster-require-full-coverage no`, as the README asks of a production cluster: otherwise every
    master refuses every command (CLUSTERDOWN) from the moment one is marked failed until its
    replica takes over, and no client can keep the healthy shards in use.
    """
    if MISSING is not None:
        pytest.skip(f"{MISSING} (apt-get install redis-server redis-tools; .ci/run installs them)")
    cluster = RedisCluster(tmp_path, masters=3, replicas=1, extra_args=["--cluster-require-full-coverage", "no"])
    cluster.start()
    yield cluster
    cluster.stop()


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
