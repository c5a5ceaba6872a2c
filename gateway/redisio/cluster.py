"""Commands to a Redis Cluster: each to the node owning its key's slot, and a node's failure its own.

Not redis-py's cluster client. What it does when one node fails (redis/asyncio/cluster.py, 8.1)
reaches every node, which with one master dead turned the cache off for the whole cluster
(issue 20: healthy shards fell from 100% to 0-6% hits until the replica took over):
- a ConnectionError or TimeoutError from one node sets `_initialize`, so the next command of any
  caller first asks for the slot map again, every caller waiting on one lock; and each such
  refresh marks every node's connections for reconnect (NodesManager.set_nodes), so the healthy
  nodes' connections are closed and opened again after every failed call to the dead one;
- a refresh that fails, or is cut by the caller's bound, closes every node's connections
  (RedisCluster.initialize: `except BaseException: nodes_manager.aclose()`);
- CLUSTERDOWN or an uncovered slot closes every connection (aclose) and sleeps 0.25 s.

Here each node has connections of its own (DirectConnections, the single server's path: a lost
connection closes that node's idle ones, no other node's) and a back-off of its own
(gateway/redisio/outage.py): three failures in a row leave that node alone for a second, so its
commands fail at once without I/O while the other nodes are used at full rate. The slot map is
read (CLUSTER SLOTS) from any node that answers, first on the first call, then in the background
after a MOVED, a CLUSTERDOWN or a node's failure, at most every REFRESH_SECONDS; learning a new
map never closes a connection. So between a master's death and its replica's promotion only its
shard's keys miss, and the promoted replica is used as soon as a healthy node reports it.

A batch is split by node and sent to the nodes at once, each part bounded apart (a share of the
caller's bound), so a hung node costs only its own commands. `execute_each` gives each command
its reply or, when its node failed, a NodeFailure in its place; `execute` raises the first.
Redirects are followed up to MAX_REDIRECTS times in a row (a MOVED to a node that answers ASK
for a slot in migration is two): a MOVED re-points the slot at once, an ASK sends the command on
with ASKING. A TRYAGAIN (a multi-key call on a slot in migration whose keys are split between
the two nodes) is sent once more after TRYAGAIN_PAUSE_SECONDS. The map is read again after a burst
of MOVEDs ends (the refresh they start waits out REFRESH_SECONDS after the last one), and every
REFRESH_EVERY_SECONDS while calls are made (one CLUSTER SHARDS, or CLUSTER SLOTS before Redis 7,
to one node); a node the new map no longer names is dropped, its connections closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError as RedisConnectionError,
    MovedError,
    ResponseError,
    TryAgainError,
)

from gateway.redisio.client import CONNECT_TIMEOUT_SECONDS, REDIS_FAILURES, cluster_nodes, node_addresses, node_url
from gateway.redisio.direct import Command, DirectConnections
from gateway.redisio.outage import Backoff, LoopLag

# A node's part of a call may take this share of the call's bound: a hung node then times out
# alone, while the caller still has time to take the other nodes' replies.
NODE_SHARE_OF_BOUND = 0.8
# How often the slot map may be asked for again while a node fails or slots move.
REFRESH_SECONDS = 0.25
# ... and how often it is read anyway while the cluster is used: a reshard that moved slots this
# process never asked for (no MOVED yet), or a node removed, is learnt within this long.
REFRESH_EVERY_SECONDS = 5.0
# Redirects followed in a row for one command (MOVED, then ASK, then one more for a map in flux).
MAX_REDIRECTS = 3
# A TRYAGAIN's keys are being moved now: a migration moves a key in well under this.
TRYAGAIN_PAUSE_SECONDS = 0.02
# Sent to every primary: they name no key.
_KEYLESS = frozenset({"PING", "SCRIPT", "FLUSHALL", "FLUSHDB", "INFO", "CLUSTER", "DBSIZE"})


class NodeFailure(RedisConnectionError):
    """A node did not answer its part of a call (or is being left alone); stands in its commands' places."""

    def __init__(self, node: str, cause: BaseException | None, backing_off: bool) -> None:
        self.node = node
        self.cause = cause
        if cause is None:
            detail = f"node {node} is left alone after failing"
        else:
            detail = f"node {node}: {type(cause).__name__}: {str(cause) or 'timed out'}"
            if backing_off:
                detail += ", leaving it alone for a moment"
        super().__init__(detail)


@dataclass
class _Node:
    connections: DirectConnections
    backoff: Backoff


class ClusterConnections:
    def __init__(
        self, url: str, timeout_seconds: float, max_connections: int,
        node_backoff: Callable[[LoopLag], Backoff] = lambda lag: Backoff(lag=lag),
    ) -> None:
        self._url = url
        self._seeds = [_name(host, port) for host, port in cluster_nodes(url)]
        self._addresses = node_addresses(url)  # announced -> reachable, for NAT, Docker, Kubernetes
        self._timeout = timeout_seconds
        self._node_timeout = timeout_seconds * NODE_SHARE_OF_BOUND
        self._max_connections = max_connections
        self._lag = LoopLag()  # one for every node's back-off: they all run on this process's loop
        self._new_backoff = node_backoff
        self._nodes: dict[str, _Node] = {}
        self._owners: list[str] | None = None  # node name per slot, once learnt
        self._primaries: list[str] = []
        self._refreshing: asyncio.Task[None] | None = None
        self._trailing: asyncio.TimerHandle | None = None  # a refresh due once REFRESH_SECONDS have passed
        self._last_refresh = -1e9
        self._shards_known: bool | None = None  # whether the nodes answer CLUSTER SHARDS, once asked

    # --- the Commands protocol

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        replies = await self.execute_each(commands)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def execute_each(self, commands: Sequence[Command]) -> list[Any]:
        """Each command's reply, an error reply (a ResponseError) or its node's NodeFailure, in order."""
        owners = self._owners if self._owners is not None else await self._learn_layout()
        results: list[Any] = [None] * len(commands)
        by_node: dict[str, list[int]] = {}
        for index, command in enumerate(commands):
            key = _key_of(command)
            if key is None:
                results[index] = await self._everywhere(command)
            else:
                by_node.setdefault(owners[key_slot(_encoded(key))], []).append(index)
        await self._send_parts(commands, by_node, results)
        tried_again: set[int] = set()  # the commands a TRYAGAIN was sent again, once
        for _ in range(MAX_REDIRECTS):
            if not await self._follow_redirects(commands, results, tried_again):
                break
        if asyncio.get_running_loop().time() - self._last_refresh > REFRESH_EVERY_SECONDS:
            self._refresh_soon()
        return results

    async def load_script(self, source: str) -> None:
        await self._everywhere(("SCRIPT", "LOAD", source), raise_unless_one=True)

    async def warm_up(self, connections: int) -> None:
        """Learn the layout and open up to `connections` to each primary; a node that is down is fine."""
        self._lag.start()
        with contextlib.suppress(*REDIS_FAILURES):
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS * len(self._seeds)):
                await self._learn_layout()
        for name in self._primaries:
            await self._node(name).connections.warm_up(connections)

    async def ping(self, timeout_seconds: float) -> bool:
        """Whether the cluster answers at all: one node down still serves the others' keys."""
        try:
            async with asyncio.timeout(timeout_seconds):
                await self._everywhere(("PING",), raise_unless_one=True)
        except REDIS_FAILURES:
            return False
        return True

    async def aclose(self) -> None:
        if self._trailing is not None:
            self._trailing.cancel()
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)
        for node in self._nodes.values():
            await node.connections.aclose()
        self._nodes.clear()

    # --- sending

    async def _send_parts(self, commands: Sequence[Command], by_node: dict[str, list[int]], results: list[Any]) -> None:
        if len(by_node) == 1:
            [(name, indexes)] = by_node.items()
            await self._send(name, [commands[i] for i in indexes], indexes, results)
        elif by_node:
            await asyncio.gather(*(
                self._send(name, [commands[i] for i in indexes], indexes, results) for name, indexes in by_node.items()
            ))

    async def _send(
        self, name: str, commands: Sequence[Command], indexes: list[int], results: list[Any], asking: bool = False,
    ) -> None:
        """One node's part of a call (`commands`): its replies, or its NodeFailure, in `results` at `indexes`."""
        node = self._node(name)
        if not node.backoff.available:
            self._refresh_soon()  # its replica may have taken over by now
            failure = NodeFailure(name, None, backing_off=True)
            for index in indexes:
                results[index] = failure
            return
        batch: Sequence[Command] = commands
        if asking:
            batch = [part for command in commands for part in (("ASKING",), command)]
        bound = asyncio.timeout(self._node_timeout)
        try:
            async with bound:
                replies = await node.connections.replies(batch)
        except REDIS_FAILURES as exc:
            deadline = bound.when()
            # An overrun is this node's, unless this process stood still through it: then nobody's.
            charged = node.backoff.charged(exc, None if deadline is None else deadline - self._node_timeout)
            failure = NodeFailure(name, exc, backing_off=charged and node.backoff.count_failure())
            self._refresh_soon()
            for index in indexes:
                results[index] = failure
            return
        node.backoff.succeeded()
        for index, reply in zip(indexes, replies[1::2] if asking else replies):
            results[index] = reply

    async def _follow_redirects(self, commands: Sequence[Command], results: list[Any], tried_again: set[int]) -> bool:
        """Send once more what a node said lives elsewhere: MOVED to its owner, ASK (a slot migrating)
        with ASKING; and a TRYAGAIN to the same node after a pause. Whether anything was sent."""
        moved: dict[str, list[int]] = {}
        asked: dict[str, list[int]] = {}
        again: dict[str, list[int]] = {}
        owners = self._owners
        for index, result in enumerate(results):
            if isinstance(result, MovedError):
                target = _name(result.host, result.port)
                self._repoint(result.slot_id, target)
                moved.setdefault(target, []).append(index)
            elif isinstance(result, AskError):
                asked.setdefault(_name(result.host, result.port), []).append(index)
            elif isinstance(result, TryAgainError) and owners is not None and index not in tried_again:
                key = _key_of(commands[index])
                if key is not None:
                    again.setdefault(owners[key_slot(_encoded(key))], []).append(index)
                    tried_again.add(index)
            elif isinstance(result, ClusterDownError):
                self._refresh_soon()
        if moved:
            self._refresh_soon()  # one MOVED usually means a whole shard moved
            await self._send_parts(commands, moved, results)
        for name, indexes in asked.items():
            await self._send(name, [commands[i] for i in indexes], indexes, results, asking=True)
        if again:  # once: a migration still splitting these keys after the pause costs this call its miss
            await asyncio.sleep(TRYAGAIN_PAUSE_SECONDS)
            await self._send_parts(commands, again, results)
        return bool(moved or asked or again)

    async def _everywhere(self, command: Command, raise_unless_one: bool = False) -> Any:
        """A keyless command on every primary: the first reply; a failure only when no node answered it."""
        names = self._primaries or self._seeds
        results: list[Any] = [None] * len(names)
        await asyncio.gather(*(self._send(name, [command], [i], results) for i, name in enumerate(names)))
        answered = [result for result in results if not isinstance(result, BaseException)]
        if answered:
            return answered[0]
        if raise_unless_one:
            raise results[0]
        return results[0]

    def _node(self, name: str) -> _Node:
        """The node the cluster calls `name` (as it announces it), reached where the URL says (`node=`)."""
        node = self._nodes.get(name)
        if node is None:
            host, _, port = name.rpartition(":")
            host, port_number = self._addresses.get((host.strip("[]"), int(port)), (host.strip("[]"), int(port)))
            url = node_url(self._url, host, port_number)
            node = self._nodes[name] = _Node(
                DirectConnections.from_url(url, self._timeout, self._max_connections), self._new_backoff(self._lag)
            )
        return node

    # --- the slot map

    async def _learn_layout(self) -> list[str]:
        """The slot map, read now (one read shared by every caller waiting for it)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._read_layout())
        await asyncio.shield(self._refreshing)
        if self._owners is None:
            raise RedisConnectionError(f"no node of the cluster answered CLUSTER SLOTS ({', '.join(self._seeds)})")
        return self._owners

    def _refresh_soon(self) -> None:
        loop = asyncio.get_running_loop()
        if self._refreshing is not None and not self._refreshing.done():
            return
        wait = REFRESH_SECONDS - (loop.time() - self._last_refresh)
        if wait > 0:
            # Asked again too soon: once more when the wait is over, so the map read after a burst
            # of redirects is one from after its end.
            if self._trailing is None:
                self._trailing = loop.call_later(wait, self._refresh_after_wait)
            return
        self._refreshing = asyncio.ensure_future(self._read_layout())
        self._refreshing.add_done_callback(_quietly)

    def _refresh_after_wait(self) -> None:
        self._trailing = None
        self._refresh_soon()

    async def _read_layout(self) -> None:
        """Ask the known primaries, then the configured nodes, until one answers; nodes left alone last."""
        self._last_refresh = asyncio.get_running_loop().time()
        names = list(dict.fromkeys([*self._primaries, *self._seeds]))
        names.sort(key=lambda name: not self._node(name).backoff.available)
        for name in names:
            try:
                async with asyncio.timeout(max(self._timeout, CONNECT_TIMEOUT_SECONDS)):
                    layout = await self._layout_from(name)
            except (*REDIS_FAILURES, ValueError, IndexError, TypeError, KeyError):
                continue  # down, or an answer that is no slot map: ask the next node
            if layout is not None:
                self._owners, self._primaries = layout
                await self._drop_stale_nodes()
                return

    async def _layout_from(self, name: str) -> tuple[list[str], list[str]] | None:
        """The slot map as node `name` has it: CLUSTER SHARDS (Redis 7), else CLUSTER SLOTS."""
        connections, host = self._node(name).connections, name.rpartition(":")[0]
        if self._shards_known is not False:
            try:
                [reply] = await connections.execute([("CLUSTER", "SHARDS")])
            except ResponseError:
                self._shards_known = False  # a Redis before 7.0
            else:
                self._shards_known = True
                return _parse_shards(reply, default_host=host)
        [reply] = await connections.execute([("CLUSTER", "SLOTS")])
        return _parse_slots(reply, default_host=host)

    async def _drop_stale_nodes(self) -> None:
        """Close the nodes the map no longer names (removed from the cluster, or demoted)."""
        keep = {*self._primaries, *self._seeds}
        for name in [name for name in self._nodes if name not in keep]:
            await self._nodes.pop(name).connections.aclose()

    def _repoint(self, slot: int, name: str) -> None:
        if self._owners is not None:
            self._owners[slot] = name
        if name not in self._primaries:
            self._primaries.append(name)


def _parse_slots(reply: Any, default_host: str) -> tuple[list[str], list[str]] | None:
    """CLUSTER SLOTS -> (owner per slot, primaries); None while some slot has no owner."""
    owners: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    primaries: list[str] = []
    for entry in reply:
        start, end, primary = int(entry[0]), int(entry[1]), entry[2]
        host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
        name = _name(host or default_host, int(primary[1]))
        if name not in primaries:
            primaries.append(name)
        owners[start:end + 1] = [name] * (end - start + 1)
    if any(owner is None for owner in owners):
        return None
    return owners, primaries  # type: ignore[return-value]  # every slot has an owner


def _parse_shards(reply: Any, default_host: str) -> tuple[list[str], list[str]] | None:
    """CLUSTER SHARDS -> (owner per slot, primaries); None while some slot has no owner."""
    owners: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    primaries: list[str] = []
    for shard in reply:
        fields = _fields(shard)
        ranges = [int(bound) for bound in fields[b"slots"]]
        master = next((node for node in map(_fields, fields[b"nodes"]) if _text(node[b"role"]) == "master"), None)
        if master is None or not ranges:
            continue
        host = next((_text(master[field]) for field in (b"endpoint", b"ip") if _text(master.get(field, b"")) not in ("", "?")),
                    default_host)
        name = _name(host, int(master[b"port"]))
        if name not in primaries:
            primaries.append(name)
        for start, end in zip(ranges[::2], ranges[1::2]):
            owners[start:end + 1] = [name] * (end - start + 1)
    if any(owner is None for owner in owners):
        return None
    return owners, primaries  # type: ignore[return-value]  # every slot has an owner


def _fields(entry: Any) -> dict[bytes, Any]:
    """A CLUSTER SHARDS map: a dict (RESP3) or a flat list of names and values (RESP2)."""
    if isinstance(entry, dict):
        return {(key.encode() if isinstance(key, str) else key): value for key, value in entry.items()}
    items = list(entry)
    return {(key.encode() if isinstance(key, str) else key): value for key, value in zip(items[::2], items[1::2])}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _key_of(command: Command) -> str | bytes | None:
    """The key that routes a command: a script's first key, else its first argument; None for keyless ones."""
    name = str(command[0]).upper()
    if name in _KEYLESS or len(command) < 2:
        return None
    if name in ("EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO"):
        return command[3] if int(command[2]) > 0 else None  # type: ignore[return-value]
    return command[1] if not isinstance(command[1], int) else str(command[1])


def _encoded(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def _name(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quietly(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # a failed background refresh is retried by the next call that needs it
