"""Commands to one server over redis-py connections, without redis-py's command path.

Used for a single server, and for each node of a Cluster (gateway/redisio/cluster.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError, ResponseError

from gateway.redisio.client import CONNECT_TIMEOUT_SECONDS, REDIS_FAILURES, redis_client

Command = tuple[str | bytes | int, ...]  # ("EVALSHA", sha, 2, key, ...)


class DirectConnections:
    """Commands to one server over redis-py connections taken from a list of idle ones.

    redis-py's command path costs more than the round trip it makes: its pool's lock and
    observability hooks, a read on every connection it hands out (a health check), a task per
    write under `socket_timeout` and a timeout context per read; a fully cached request spent
    about 30% of its CPU there (docs/bench-history.md). Here a call takes the last idle connection, writes
    its commands, reads their replies and puts the connection back. The caller bounds the whole
    call (asyncio.timeout), so the connections have no timeouts of their own but the connect's.
    A connection whose call failed or was cut is closed, never reused; a lost connection also
    closes the idle ones, because after Redis restarts they are all dead, and finding that out
    one call at a time would fail a call for each.
    """

    def __init__(self, client: aioredis.Redis, max_connections: int) -> None:
        self._client = client  # for its URL's settings, and for what is not on the hot path
        pool = client.connection_pool
        self._open = functools.partial(pool.connection_class, **{**pool.connection_kwargs, "socket_timeout": None})
        self._idle: list[AbstractConnection] = []
        self._turns = asyncio.Semaphore(max_connections)

    @classmethod
    def from_url(cls, url: str, timeout_seconds: float, max_connections: int) -> DirectConnections:
        """To the one server of a `redis://`, `rediss://` or `unix://` URL (its TLS, credentials, options)."""
        client = redis_client(url, timeout_seconds, max_connections)
        assert isinstance(client, aioredis.Redis), "a Cluster URL takes ClusterConnections"
        return cls(client, max_connections)

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        return await self._exchange(commands, AbstractConnection.read_response)

    execute_each = execute  # all or nothing: one server

    async def replies(self, commands: Sequence[Command]) -> list[Any]:
        """execute, but an error reply (MOVED, NOSCRIPT, ...) stands in its command's place instead of failing the call.

        For a Cluster node, where such a reply concerns one command of the batch. redis-py reads
        an error reply whole before raising it, so the connection stays in step and is kept.
        """
        return await self._exchange(commands, _reply_or_error)

    async def _exchange(
        self, commands: Sequence[Command], read: Callable[[AbstractConnection], Awaitable[Any]]
    ) -> list[Any]:
        """One round trip on an idle connection (or a new one): the commands written, `read` per reply."""
        async with self._turns:
            connection = self._idle.pop() if self._idle else self._open()
            try:
                await connection.send_packed_command(_packed(commands), check_health=False)
                replies = [await read(connection) for _ in commands]
            except BaseException as exc:
                # A reply may be left unread (an error reply, a cut read): the connection is done.
                await connection.disconnect(nowait=True)
                if isinstance(exc, (RedisConnectionError, OSError)):
                    await self._close_idle()
                raise
            self._idle.append(connection)
            return replies

    async def load_script(self, source: str) -> None:
        await self.execute([("SCRIPT", "LOAD", source)])

    async def warm_up(self, connections: int) -> None:
        """Open up to `connections` now; a Redis that is down is fine (callers log it later)."""
        for _ in range(connections - len(self._idle)):
            connection = self._open()
            try:
                await asyncio.wait_for(connection.connect(), CONNECT_TIMEOUT_SECONDS)
            except REDIS_FAILURES:
                await connection.disconnect(nowait=True)
                return
            self._idle.append(connection)

    async def ping(self, timeout_seconds: float) -> bool:
        try:
            async with asyncio.timeout(timeout_seconds):
                return bool(await self.execute([("PING",)]))
        except REDIS_FAILURES:
            return False

    async def aclose(self) -> None:
        await self._close_idle()
        await self._client.aclose()

    async def _close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect(nowait=True)


def _packed(commands: Sequence[Command]) -> bytes:
    # hiredis packs in C, in a sixth of the time redis-py's pack_command takes (same bytes).
    # Its stub types the argument as a one-item tuple; it takes any length.
    return b"".join(pack_command(command) for command in commands)  # type: ignore[arg-type]




async def _reply_or_error(connection: AbstractConnection) -> Any:
    try:
        return await connection.read_response()
    except ResponseError as error:
        return error
