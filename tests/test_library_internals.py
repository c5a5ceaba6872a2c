"""The parts of aiohttp and redis-py that are not their public API but the gateway relies on.

pyproject.toml bounds both from above for this reason. When a new release moves one of these,
the test names it, instead of the gateway failing somewhere downstream (a malformed request
answered in text/plain again, a Redis call that cannot open its connection). Raise the bound
only once this file passes against the new release.

    gateway/process/server.py    aiohttp's per-connection RequestHandler and the Server that makes it
    gateway/redisio/commands.py  redis-py's connection classes, used without its pool
    gateway/redisio/client.py    redis-py's pool and cluster nodes, for warming connections up
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import abc as aiohttp_abc, web
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection

from gateway.process.server import GatewayRunner, JsonErrorRequestHandler


def parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def has(owner: object, name: str, what: str) -> None:
    assert hasattr(owner, name), f"{what}: {getattr(owner, '__qualname__', owner)}.{name} is gone"


# --- aiohttp: gateway/process/server.py

def test_aiohttp_request_handler_keeps_the_error_hook_the_gateway_overrides():
    what = "JsonErrorRequestHandler overrides it to answer aiohttp's own refusals in JSON"
    has(web.RequestHandler, "handle_error", what)
    assert parameters(web.RequestHandler.handle_error) == ["self", "request", "status", "exc", "message"], (
        f"{what}: aiohttp.web.RequestHandler.handle_error's signature changed"
    )
    has(web.RequestHandler, "log_exception", "JsonErrorRequestHandler logs a 5xx with it")
    assert "loop" in parameters(web.RequestHandler.__init__), "aiohttp.web.RequestHandler(manager, loop=...) changed"
    # handle_error asks whether the response has started: request.writer.output_size.
    has(aiohttp_abc.AbstractStreamWriter, "output_size", "JsonErrorRequestHandler reads request.writer.output_size")


def test_aiohttp_request_handler_keeps_what_the_head_timeout_uses():
    """JsonErrorRequestHandler's head timeout: it schedules on the handler's loop when the connection
    is made, looks at the queue of parsed request heads after each chunk, and closes by force_close."""
    what = "JsonErrorRequestHandler's header_timeout"
    for name in ("connection_made", "data_received", "connection_lost", "force_close"):
        has(web.RequestHandler, name, what)
    slots = {name for cls in web.RequestHandler.__mro__ for name in getattr(cls, "__slots__", ())}
    for attribute in ("_messages", "_loop"):
        assert attribute in slots, f"{what}: aiohttp.web.RequestHandler.{attribute} is gone"
    # A client past max_clients gets its request answered by _answer_busy, set as the handler's own.
    assert "_request_handler" in slots, "JsonErrorRequestHandler's busy answer: RequestHandler._request_handler is gone"


def test_aiohttp_app_runner_still_builds_its_server_in_make_server():
    has(web.AppRunner, "_make_server", "GatewayRunner overrides it to swap the server's handler class")
    assert inspect.iscoroutinefunction(web.AppRunner._make_server), "aiohttp.web.AppRunner._make_server is no longer async"


async def test_aiohttp_server_makes_handlers_from_its_loop_and_kwargs():
    """_JsonErrorServer.__call__ builds the handler from Server._loop and Server._kwargs, as aiohttp's does."""
    runner = GatewayRunner(web.Application())
    await runner.setup()
    try:
        server = runner.server
        assert server is not None
        has(server, "_loop", "_JsonErrorServer.__call__ passes aiohttp.web.Server._loop on")
        has(server, "_kwargs", "_JsonErrorServer.__call__ passes aiohttp.web.Server._kwargs on")
        assert isinstance(server(), JsonErrorRequestHandler), "the swapped server class no longer makes the handler"
    finally:
        await runner.cleanup()


# --- redis-py: gateway/redisio/commands.py and client.py

def test_redis_pool_exposes_the_class_and_settings_of_its_connections():
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
    pool = client.connection_pool
    what = "DirectConnections opens connections itself from the pool's connection_class and connection_kwargs"
    has(pool, "connection_class", what)
    has(pool, "connection_kwargs", what)
    assert issubclass(pool.connection_class, AbstractConnection), what
    # With its own socket_timeout: nothing connects until connect() or the first command.
    connection = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
    assert isinstance(connection, AbstractConnection)
    has(pool, "get_connection", "warm_up opens pooled connections with it")
    has(pool, "release", "warm_up gives them back with it")


@pytest.mark.parametrize(("method", "needs"), [
    ("send_packed_command", ["command", "check_health"]),  # hiredis-packed bytes, no health check per call
    ("read_response", []),
    ("disconnect", ["nowait"]),
    ("connect", []),
])
def test_redis_connections_keep_the_methods_direct_connections_call(method: str, needs: list[str]):
    has(AbstractConnection, method, "DirectConnections.execute sends and reads on the connection itself")
    missing = [name for name in needs if name not in parameters(getattr(AbstractConnection, method))]
    assert not missing, f"redis.asyncio.connection.AbstractConnection.{method} lost its parameters {missing}"


def test_redis_cluster_nodes_keep_what_warm_up_uses():
    what = "warm_up of a cluster opens connections to each primary"
    for name in ("initialize", "get_primaries"):
        has(RedisCluster, name, what)
    for name in ("acquire_connection", "release"):
        has(ClusterNode, name, what)
    node = ClusterNode("127.0.0.1", 1, max_connections=2)
    has(node, "max_connections", what)
    cluster = RedisCluster(startup_nodes=[node])
    has(cluster, "nodes_manager", what)
    has(cluster.nodes_manager, "startup_nodes", what)


# --- prometheus-client: gateway/observability/tally.py

def test_a_tallied_histogram_ends_up_as_prometheus_client_observes_it():
    """Tally writes a loop turn's observations through a histogram's own buckets, bounds and sum."""
    from prometheus_client import CollectorRegistry, Histogram

    from gateway.observability.tally import Tally

    registry = CollectorRegistry()
    observed = Histogram("observed", "by observe()", buckets=(0.1, 1.0), registry=registry)
    tallied = Histogram("tallied", "through Tally", buckets=(0.1, 1.0), registry=registry)
    for name in ("_upper_bounds", "_buckets", "_sum"):
        has(tallied, name, "Tally adds a loop turn's observations to it")
    tally = Tally()
    for value in (0.0, 0.1, 0.5, 1.0, 7.0, 0.05):
        observed.observe(value)
        tally.observe(tallied, value)
    tally.flush()

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        (metric,) = [m for m in registry.collect() if m.name == name]
        return [(s.name.removeprefix(name), s.labels, s.value) for s in metric.samples if not s.name.endswith("_created")]

    assert samples("tallied") == samples("observed")
    assert ("_count", {}, 6.0) in samples("tallied")
