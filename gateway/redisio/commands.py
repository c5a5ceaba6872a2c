"""How the score cache and the spend ledger talk to Redis: batches of commands, one round trip each.

Two ways to send them. To one server, over DirectConnections: redis-py's connections, but not its
command path, which costs more CPU than the round trip it makes (measured by
bench/cache_client.py; see bench/README). To a Cluster, through redis-py's cluster client
(ClientCommands), which routes each command to the node owning its key's slot.

Scripts run by EVALSHA and are loaded only when Redis says it lacks one (run_scripts).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError, NoScriptError

from gateway.redisio.client import CONNECT_TIMEOUT_SECONDS, REDIS_FAILURES, RedisClient, ping, redis_client, warm_up

Command = tuple[str | bytes | int, ...]  # ("EVALSHA", sha, 2, key, ...)


class Commands(Protocol):
    """Where the score cache and the ledger send their commands: one round trip for a batch of them."""

    async def execute(self, commands: Sequence[Command]) -> list[Any]: ...
    async def load_script(self, source: str) -> None: ...
    async def warm_up(self, connections: int) -> None: ...
    async def ping(self, timeout_seconds: float) -> bool: ...
    async def aclose(self) -> None: ...


def commands_for(url: str, timeout_seconds: float, max_connections: int) -> Commands:
    """Direct connections to one server; redis-py's cluster client for a Cluster."""
    client = redis_client(url, timeout_seconds, max_connections)
    if isinstance(client, RedisCluster):
        return ClientCommands(client)
    return DirectConnections(client, max_connections)


class ClientCommands:
    """Commands through a redis-py client: a Cluster's (which routes each to its slot's node), or any."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        if len(commands) == 1:
            # One query, the common case: a plain command skips the pipeline's bookkeeping.
            return [await self.client.execute_command(*commands[0])]
        async with self.client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()

    async def load_script(self, source: str) -> None:
        await self.client.script_load(source)  # a cluster client loads it on every primary

    async def warm_up(self, connections: int) -> None:
        await warm_up(self.client, connections)

    async def ping(self, timeout_seconds: float) -> bool:
        return await ping(self.client, timeout_seconds)

    async def aclose(self) -> None:
        await self.client.aclose()


class DirectConnections:
    """Commands to one server over redis-py connections taken from a list of idle ones.

    redis-py's command path costs more than the round trip it makes: its pool's lock and
    observability hooks, a read on every connection it hands out (a health check), a task per
    write under `socket_timeout` and a timeout context per read; a fully cached request spent
    about 30% of its CPU there (bench/README). Here a call takes the last idle connection, writes
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

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        async with self._turns:
            connection = self._idle.pop() if self._idle else self._open()
            try:
                await connection.send_packed_command(_packed(commands), check_health=False)
                replies = [await connection.read_response() for _ in commands]
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


@dataclass(frozen=True)
class Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


ScriptCall = tuple[Script, Sequence[str], Sequence[Any]]  # (script, keys, args)


def _packed(commands: Sequence[Command]) -> bytes:
    # hiredis packs in C, in a sixth of the time redis-py's pack_command takes (same bytes).
    # Its stub types the argument as a one-item tuple; it takes any length.
    return b"".join(pack_command(command) for command in commands)  # type: ignore[arg-type]


async def run_scripts(commands: Commands, calls: Sequence[ScriptCall]) -> list[Any]:
    """Every call's reply, in one round trip: EVALSHA, loading the scripts only when Redis lacks one.

    Not redis-py's pipelined scripts: they ask SCRIPT EXISTS before every pipeline, a round trip
    more. A restarted or new node answers NOSCRIPT once; the calls are then sent again, which is
    safe because each script stores the same result when run twice.
    """
    # Not a pipeline's evalsha: redis-py's cluster pipeline refuses it, unsure the script is on
    # every node; NOSCRIPT is handled here, where the script is loaded on all of them.
    batch = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]
    try:
        return await commands.execute(batch)
    except NoScriptError:
        for script in {call[0] for call in calls}:
            await commands.load_script(script.source)
        return await commands.execute(batch)
