"""How the score cache and the spend ledger talk to Redis: batches of commands, one round trip each.

Three ways to send them. To one server, over DirectConnections (gateway/redisio/direct.py):
redis-py's connections, but not its command path, which costs more CPU than the round trip it
makes (measured by bench/cache_client.py; see docs/bench-history.md). To a Cluster, over ClusterConnections
(gateway/redisio/cluster.py): DirectConnections per node, each command to the node owning its
key's slot, and one node's failure kept to that node's commands (why not redis-py's cluster
client is said there). Through any redis-py client (ClientCommands): fakeredis in tests.

Scripts run by EVALSHA and are loaded only when Redis says it lacks one (run_scripts).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.exceptions import NoScriptError

from gateway.redisio.client import RedisClient, is_cluster_url, ping, warm_up
from gateway.redisio.cluster import ClusterConnections
from gateway.redisio.direct import Command, DirectConnections

__all__ = ["ClientCommands", "ClusterConnections", "Command", "Commands", "DirectConnections", "Script",
           "ScriptCall", "commands_for", "run_scripts", "run_scripts_each"]


class Commands(Protocol):
    """Where the score cache and the ledger send their commands: one round trip for a batch of them."""

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Every command's reply; raises the first failure (or error reply)."""
        ...

    async def execute_each(self, commands: Sequence[Command]) -> list[Any]:
        """Every command's reply, where a failure that concerns some commands only (one Cluster node's)
        stands in their places as the exception; a failure of the whole call is raised."""
        ...

    async def load_script(self, source: str) -> None: ...
    async def warm_up(self, connections: int) -> None: ...
    async def ping(self, timeout_seconds: float) -> bool: ...
    async def aclose(self) -> None: ...


def commands_for(url: str, timeout_seconds: float, max_connections: int) -> Commands:
    """Direct connections to one server; direct connections per node for a Cluster."""
    if is_cluster_url(url):
        return ClusterConnections(url, timeout_seconds, max_connections)
    return DirectConnections.from_url(url, timeout_seconds, max_connections)


class ClientCommands:
    """Commands through a redis-py client (fakeredis in tests; redis-py's own cluster client would work too)."""

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

    execute_each = execute  # all or nothing: one server

    async def load_script(self, source: str) -> None:
        await self.client.script_load(source)  # a cluster client loads it on every primary

    async def warm_up(self, connections: int) -> None:
        await warm_up(self.client, connections)

    async def ping(self, timeout_seconds: float) -> bool:
        return await ping(self.client, timeout_seconds)

    async def aclose(self) -> None:
        await self.client.aclose()


@dataclass(frozen=True)
class Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


ScriptCall = tuple[Script, Sequence[str], Sequence[Any]]  # (script, keys, args)


def _script_batch(calls: Sequence[ScriptCall]) -> list[Command]:
    # Not a pipeline's evalsha: redis-py's cluster pipeline refuses it, unsure the script is on
    # every node; NOSCRIPT is handled here, where the script is loaded on all of them.
    return [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]


async def run_scripts(commands: Commands, calls: Sequence[ScriptCall]) -> list[Any]:
    """Every call's reply, in one round trip: EVALSHA, loading the scripts only when Redis lacks one.

    Not redis-py's pipelined scripts: they ask SCRIPT EXISTS before every pipeline, a round trip
    more. A restarted or new node answers NOSCRIPT once; the calls are then sent again, which is
    safe because each script stores the same result when run twice.
    """
    batch = _script_batch(calls)
    try:
        return await commands.execute(batch)
    except NoScriptError:
        await _load(commands, calls)
        return await commands.execute(batch)


async def run_scripts_each(commands: Commands, calls: Sequence[ScriptCall]) -> list[Any]:
    """run_scripts, but a call on a failed Cluster node holds its failure (a RedisError) instead of a reply.

    A NOSCRIPT of some calls only (a promoted replica, a restarted node) sends those again.
    """
    batch = _script_batch(calls)
    try:
        replies = await commands.execute_each(batch)
    except NoScriptError:  # one server: the whole batch
        await _load(commands, calls)
        return await commands.execute_each(batch)
    for reply in replies:
        if isinstance(reply, BaseException):
            break
    else:
        return replies  # the usual case, in one cheap pass: every call answered
    unknown = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if unknown:
        await _load(commands, [calls[index] for index in unknown])
        for index, reply in zip(unknown, await commands.execute_each([batch[index] for index in unknown])):
            replies[index] = reply
    return replies


async def _load(commands: Commands, calls: Sequence[ScriptCall]) -> None:
    for script in {call[0] for call in calls}:
        await commands.load_script(script.source)
