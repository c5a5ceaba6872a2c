"""The redis-py client behind the score cache and the spend ledger: one server, or a Cluster.

One server: the gateway sends its commands over connections made from this client's settings
(URL, TLS, credentials, timeouts) by gateway/redisio/commands.py, not through the client's pool.
Whoever uses the client itself gets a blocking pool, so a burst waits briefly for one of a few
connections instead of failing (redis-py's default pool raises past its size). Connections are
opened at start-up (warm_up), because opening one costs far more than the small per-call timeout
allows, and a burst of cold connects would otherwise all time out.

A Cluster (`redis+cluster://host:port,host:port`, `rediss+cluster://` for TLS, credentials as in
`redis://`): any reachable nodes of it, from which redis-py's cluster client learns the rest and
routes each command to the node owning its key's slot. Its per-node pools raise when full rather
than wait, so callers here wait instead for one of `max_connections` turns: a call uses at most
one connection per node at a time, so no node holds more than that many (plus one on a node the
client asks for the layout). The same timeouts as for one server; nothing is retried inside
redis-py, though a MOVED or ASK is still followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError, RedisClusterException, RedisError

# Opening a connection (TCP, maybe TLS and AUTH) may take longer than one call is allowed.
CONNECT_TIMEOUT_SECONDS = 2.0

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# Everything a Redis call may raise when Redis, not the caller, is at fault. The cluster client
# raises RedisClusterException (not a RedisError) when no node answers or slots are uncovered.
REDIS_FAILURES = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)

RedisClient = aioredis.Redis | RedisCluster


def redis_client(url: str, timeout_seconds: float, max_connections: int) -> RedisClient:
    timeouts = {
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": max(timeout_seconds, CONNECT_TIMEOUT_SECONDS),
    }
    if is_cluster_url(url):
        return _cluster_client(url, max_connections, timeouts)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_seconds,
        # Retrying inside redis-py would stretch the bound; callers fall back instead.
        retry_on_timeout=False,
        **timeouts,
    )
    return aioredis.Redis.from_pool(pool)


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) of each node a `redis+cluster://` URL names; ValueError says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a {' or '.join(f'{scheme}://' for scheme in CLUSTER_SCHEMES)} URL")
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has only database 0")
    hosts = parts.netloc.rpartition("@")[2]
    nodes = []
    for host in hosts.split(","):
        node = urlsplit(f"//{host.strip()}")
        if not node.hostname:
            raise ValueError(f"names no node in {hosts!r}; expected {parts.scheme}://host:port,host:port,...")
        try:
            port = node.port or 6379
        except ValueError:
            raise ValueError(f"node {host!r} has no valid port") from None
        nodes.append((node.hostname, port))
    return nodes


def _cluster_client(url: str, max_connections: int, timeouts: dict[str, float]) -> RedisCluster:
    nodes = cluster_nodes(url)
    # Credentials, TLS and options are read from the URL with its first node alone.
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    first_node = parts._replace(scheme=CLUSTER_SCHEMES[parts.scheme], netloc=userinfo + at + hosts.split(",")[0].strip())
    return _TurnTakingCluster.from_url(
        urlunsplit(first_node),
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        max_connections=max_connections,
        # No retries inside redis-py (they would stretch the bound); a MOVED or ASK is still followed.
        retry=Retry(NoBackoff(), 0),
        # A MOVED updates the slot's owner (a whole shard's after a failover). By default every
        # fifth one also closes every connection, under the calls still using them.
        reinitialize_steps=0,
        **timeouts,
    )


async def warm_up(client: RedisClient, connections: int) -> None:
    """Open `connections` pooled connections now; a Redis that is down is fine (logged by callers later)."""
    if isinstance(client, RedisCluster):
        await _warm_up_cluster(client, connections)
        return
    pool = client.connection_pool
    opened = []
    try:
        for _ in range(connections):
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                connection = await asyncio.wait_for(pool.get_connection(), CONNECT_TIMEOUT_SECONDS)
                opened.append(connection)
    finally:
        for connection in opened:
            await pool.release(connection)


async def _warm_up_cluster(client: RedisCluster, connections: int) -> None:
    """Learn the cluster's layout, then open up to `connections` connections to each primary."""
    try:
        # Each configured node is asked in turn until one answers.
        budget = CONNECT_TIMEOUT_SECONDS * len(client.nodes_manager.startup_nodes)
        await asyncio.wait_for(client.initialize(), budget)
    except REDIS_FAILURES:
        return
    for node in client.get_primaries():
        opened = []
        try:
            for _ in range(min(connections, node.max_connections)):
                connection = node.acquire_connection()
                opened.append(connection)
                await asyncio.wait_for(connection.connect(), CONNECT_TIMEOUT_SECONDS)
        except REDIS_FAILURES:
            pass  # this node is down or slow: it connects on first use
        finally:
            for connection in opened:
                node.release(connection)


# Set while a task holds a turn, so a call made inside another (a pipeline following a MOVED)
# does not wait for a second turn, which could deadlock once every turn is taken.
_holding_turn: contextvars.ContextVar[bool] = contextvars.ContextVar("holding_redis_turn", default=False)


class _TurnTakingCluster(RedisCluster):
    """redis-py's cluster client, whose callers wait for a turn instead of failing on a full pool."""

    def __init__(self, *args: Any, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "max_connections": max_connections})
        self._turns = asyncio.Semaphore(max_connections)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if _holding_turn.get():
            yield
            return
        async with self._turns:
            token = _holding_turn.set(True)
            try:
                yield
            finally:
                _holding_turn.reset(token)

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        async with self.turn():
            return await super().initialize(*args, **kwargs)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.turn():
            if self.get_default_node() is None:
                # Until it knows the layout, redis-py sends a keyed command to a random node and
                # chases the MOVED replies: learn it first, as a pipeline does.
                await self.initialize()
            with _closed_under_the_call():
                return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        # redis-py declares `_event_dispatcher` on a Protocol its ClusterPipeline never assigns, so
        # mypy takes the class as abstract; redis-py's own pipeline() makes this same call.
        return _TurnTakingPipeline(self, transaction)  # type: ignore[abstract]


class _TurnTakingPipeline(ClusterPipeline):
    cluster_client: _TurnTakingCluster

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        async with self.cluster_client.turn():
            with _closed_under_the_call():
                return await super().execute(raise_on_error, allow_redirections)


@contextlib.contextmanager
def _closed_under_the_call() -> Iterator[None]:
    # After a CLUSTERDOWN redis-py closes every connection, also those other calls are still
    # using; such a call may then fail inside redis-py with an AttributeError. It is a lost
    # connection, and the callers treat it as one instead of failing the request.
    try:
        yield
    except AttributeError as exc:
        raise RedisConnectionError("connection closed under the call by a cluster layout refresh") from exc


async def ping(client: RedisClient, timeout_seconds: float) -> bool:
    """Whether Redis answers within the bound; never raises."""
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout_seconds))
    except REDIS_FAILURES:
        return False
