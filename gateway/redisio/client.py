"""The redis-py client behind the score cache and the spend ledger's connections, URLs, warm-up, ping.

One server: the gateway sends its commands over connections made from this client's settings
(URL, TLS, credentials, timeouts) by gateway/redisio/direct.py, not through the client's pool.
Whoever uses the client itself gets a blocking pool, so a burst waits briefly for one of a few
connections instead of failing (redis-py's default pool raises past its size). Connections are
opened at start-up (warm_up), because opening one costs far more than the small per-call timeout
allows, and a burst of cold connects would otherwise all time out.

A Cluster (`redis+cluster://host:port,host:port`, `rediss+cluster://` for TLS, credentials as in
`redis://`): any reachable nodes of it. gateway/redisio/cluster.py talks to it, one such client's
settings per node (node_url); why not redis-py's cluster client is said there.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.credentials import CredentialProvider
from redis.exceptions import RedisClusterException, RedisError

# Opening a connection (TCP, maybe TLS and AUTH) may take longer than one call is allowed.
CONNECT_TIMEOUT_SECONDS = 2.0

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# Everything a Redis call may raise when Redis, not the caller, is at fault. redis-py's cluster
# client (a caller's own, in ClientCommands) raises RedisClusterException, not a RedisError.
REDIS_FAILURES = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)

RedisClient = aioredis.Redis | RedisCluster  # what ClientCommands takes


def redis_client(url: str, timeout_seconds: float, max_connections: int) -> aioredis.Redis:
    """A client of one server (`redis://`, `rediss://`, `unix://`), for its settings and its blocking pool."""
    timeouts = {
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": max(timeout_seconds, CONNECT_TIMEOUT_SECONDS),
    }
    if is_cluster_url(url):
        raise ValueError("a redis+cluster:// URL names several servers: ClusterConnections talks to each (node_url)")
    url, credentials = _credentials_of(url)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_seconds,
        # Retrying inside redis-py would stretch the bound; callers fall back instead.
        retry_on_timeout=False,
        **credentials,
        **timeouts,
    )
    return aioredis.Redis.from_pool(pool)


# A URL's option naming a file that holds the password, read again for every new connection: a
# secret that rotates (a Kubernetes secret volume, a Vault agent's file) needs no restart. Not a
# redis-py option; the URL's user name, if any, goes with it.
PASSWORD_FILE_OPTION = "password_file"


class PasswordFile(CredentialProvider):
    """The password in a file, read when a connection is opened (at start, and after a failure), never per call."""

    def __init__(self, path: str, username: str | None) -> None:
        self.path = path
        self._username = username

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        with open(self.path, encoding="utf-8") as file:
            password = file.read().strip()
        return (password,) if self._username is None else (self._username, password)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()  # a few bytes on a local disk: no thread needed


def _credentials_of(url: str) -> tuple[str, dict[str, CredentialProvider]]:
    """The URL without its `password_file` option, and the credential provider that option names."""
    parts = urlsplit(url)
    options = parse_qsl(parts.query)
    files = [value for name, value in options if name == PASSWORD_FILE_OPTION]
    if not files:
        return url, {}
    if parts.password:
        raise ValueError("a Redis URL takes a password or a password_file option, not both")
    kept = urlencode([(name, value) for name, value in options if name != PASSWORD_FILE_OPTION])
    address = parts.netloc.rpartition("@")[2]
    plain = urlunsplit(parts._replace(netloc=address, query=kept))
    return plain, {"credential_provider": PasswordFile(files[-1], unquote(parts.username) if parts.username else None)}


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


# A cluster URL's option naming where a node the cluster announces is reached from here, once per
# node: `?node=ANNOUNCED_HOST:PORT=REACHABLE_HOST:PORT` (NAT, Docker, Kubernetes). Not a redis-py option.
NODE_ADDRESS_OPTION = "node"


def node_url(url: str, host: str, port: int) -> str:
    """A `redis+cluster://` URL's credentials, TLS and options, for one of its nodes: `redis://user:pw@host:port/0?...`."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    options = urlencode([(name, value) for name, value in parse_qsl(parts.query) if name != NODE_ADDRESS_OPTION])
    return urlunsplit(parts._replace(
        scheme=CLUSTER_SCHEMES[parts.scheme], netloc=f"{userinfo}{at}{address}", query=options))


def node_addresses(url: str) -> dict[tuple[str, int], tuple[str, int]]:
    """A cluster URL's `node` options: announced (host, port) -> the (host, port) to connect to."""
    addresses = {}
    for name, value in parse_qsl(urlsplit(url).query):
        if name == NODE_ADDRESS_OPTION:
            announced, equals, reachable = value.partition("=")
            if not equals:
                raise ValueError(f"node={value!r}: expected node=ANNOUNCED_HOST:PORT=REACHABLE_HOST:PORT")
            addresses[_address(announced)] = _address(reachable)
    return addresses


def _address(text: str) -> tuple[str, int]:
    node = urlsplit(f"//{text.strip()}")
    try:
        port = node.port
    except ValueError:
        port = None
    if not node.hostname or port is None:
        raise ValueError(f"{text!r} is not host:port")
    return node.hostname, port


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
    node_addresses(url)  # raises ValueError naming a malformed one
    return nodes


async def warm_up(client: RedisClient, connections: int) -> None:
    """Open `connections` pooled connections now; a Redis that is down is fine (logged by callers later)."""
    if isinstance(client, RedisCluster):
        return  # a caller's own cluster client (ClientCommands) connects on first use
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


async def ping(client: RedisClient, timeout_seconds: float) -> bool:
    """Whether Redis answers within the bound; never raises."""
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout_seconds))
    except REDIS_FAILURES:
        return False
