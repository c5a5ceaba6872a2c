"""DirectConnections against a real redis-server: replies never cross calls, and lost connections heal.

The score cache and the spend ledger send every command through it (one server), so a reply
read by the wrong call would put one query's scores on another's passages.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError, ResponseError

from gateway.redisio.client import redis_client
from gateway.redisio.commands import DirectConnections, Script, run_scripts
from tests.support.polling import eventually
from tests.support.redis_server import RedisServer, own_redis_server

ECHO_KEY = Script("return {KEYS[1], ARGV[1]}")


def direct(url: str, max_connections: int = 4) -> DirectConnections:
    client = redis_client(url, timeout_seconds=1.0, max_connections=max_connections)
    assert isinstance(client, aioredis.Redis)
    return DirectConnections(client, max_connections)


async def connected_clients(url: str, name: str) -> int:
    """Connections named `name` (the URL's client_name): other tests' connections may come and go."""
    async with aioredis.Redis.from_url(url.partition("?")[0]) as observer:
        return sum(1 for client in await observer.client_list() if client["name"] == name)


async def no_client_blocked(url: str) -> bool:
    """Whether no client is blocked in a command (BLPOP) on the server at `url`."""
    async with aioredis.Redis.from_url(url.partition("?")[0]) as observer:
        return (await observer.info("clients"))["blocked_clients"] == 0


async def test_a_batch_is_one_reply_per_command_in_order(redis_url):
    commands = direct(redis_url)
    try:
        assert await commands.execute([("SET", "a", "1"), ("GET", "a"), ("ECHO", "x")]) == [b"OK", b"1", b"x"]  # raw replies
    finally:
        await commands.aclose()


async def test_a_call_cut_by_its_caller_never_hands_its_late_reply_to_the_next(redis_url):
    commands = direct(redis_url, max_connections=1)  # one connection: the next call would reuse it
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await commands.execute([("BLPOP", "nothing-here", "0.4")])  # answers nil 0.4 s later
        assert await commands.execute([("ECHO", "mine")]) == [b"mine"]
        # Redis has answered the cut call by now (or dropped it with its connection): nobody blocks in BLPOP.
        await eventually(lambda: no_client_blocked(redis_url), what="the cut BLPOP ending")
        assert await commands.execute([("ECHO", "still mine")]) == [b"still mine"]
    finally:
        await commands.aclose()


async def test_an_error_reply_fails_its_call_and_not_the_next(redis_url):
    commands = direct(redis_url, max_connections=1)
    try:
        await commands.execute([("SET", "text", "not a hash")])
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await commands.execute([("HGET", "text", "field"), ("ECHO", "left unread")])
        assert await commands.execute([("ECHO", "next")]) == [b"next"]
    finally:
        await commands.aclose()


async def test_replies_keep_an_error_reply_in_its_place_and_the_connection_in_step(redis_url):
    # A Cluster node's batch: a MOVED or NOSCRIPT concerns one command, not the ones after it.
    # This relies on redis-py reading an error reply whole before raising it (read_response).
    commands = direct(redis_url, max_connections=1)
    try:
        await commands.execute([("SET", "text", "not a hash")])
        first, error, after = await commands.replies([("ECHO", "a"), ("HGET", "text", "f"), ("ECHO", "b")])
        assert (first, after) == (b"a", b"b")
        assert isinstance(error, ResponseError) and "WRONGTYPE" in str(error)
        assert await commands.execute([("ECHO", "next")]) == [b"next"]  # the same connection, in step
        assert len(commands._idle) == 1
    finally:
        await commands.aclose()


async def test_scripts_unknown_to_redis_are_loaded_and_run(redis_url):
    commands = direct(redis_url)
    try:
        await commands.execute([("SCRIPT", "FLUSH")])
        calls = [(ECHO_KEY, ["{q}a"], ["1"]), (ECHO_KEY, ["{q}b"], ["2"])]
        assert await run_scripts(commands, calls) == [[b"{q}a", b"1"], [b"{q}b", b"2"]]
    finally:
        await commands.aclose()


async def test_never_more_connections_than_allowed(redis_url):
    url = f"{redis_url}?client_name=bounded"
    commands = direct(url, max_connections=3)
    try:
        replies = await asyncio.gather(*(commands.execute([("ECHO", str(i))]) for i in range(50)))
        assert replies == [[str(i).encode()] for i in range(50)]
        assert await connected_clients(url, "bounded") == 3
    finally:
        await commands.aclose()
    # Closed without waiting: Redis sees the connections go a moment later.
    async def none_left() -> bool:
        return await connected_clients(url, "bounded") == 0

    await eventually(none_left, what="closing every connection")


@own_redis_server
async def test_after_redis_restarts_one_call_fails_at_most_then_every_call_is_served(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    url = f"{server.url}?client_name=restarted"
    commands = direct(url, max_connections=8)
    try:
        await commands.warm_up(8)
        assert await connected_clients(url, "restarted") == 8
        server.stop()
        server.start()  # same port: every idle connection is to the old process
        outcomes = []
        for i in range(10):
            try:
                outcomes.append(await commands.execute([("ECHO", str(i))]) == [str(i).encode()])
            except RedisConnectionError:
                outcomes.append(False)
        assert outcomes.count(False) <= 1 and all(outcomes[1:]), outcomes
        assert await commands.ping(1.0)
    finally:
        await commands.aclose()
        server.stop()


async def test_ping_says_false_when_redis_is_away(unused_tcp_port):
    commands = direct(f"redis://127.0.0.1:{unused_tcp_port}/0")
    try:
        assert not await commands.ping(0.5)
        await commands.warm_up(2)  # a Redis that is down is fine at start-up
    finally:
        await commands.aclose()


def test_commands_are_packed_byte_for_byte_as_redis_py_packs_them():
    from gateway.redisio.direct import _packed

    connection = aioredis.Redis().connection_pool.make_connection()  # never connected
    commands = [("EVALSHA", "f" * 40, 2, "rr:{q}", "rr:{q}:leases", "owner", 5000, bytes(range(16)), -1),
                ("SCRIPT", "LOAD", "return 1"), ("SET", "big", b"\x00" * 70_000)]  # past redis-py's buffer cutoff
    assert _packed(commands) == b"".join(connection.pack_commands(commands))


@own_redis_server
async def test_a_unix_socket_url_is_served_by_direct_connections(tmp_path):
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path, extra_args=["--unixsocket", str(socket_path)])
    server.start()
    commands = direct(f"unix://{socket_path}")
    try:
        assert await commands.execute([("SET", "k", "v"), ("GET", "k")]) == [b"OK", b"v"]
        with server.client() as over_tcp:
            assert over_tcp.get("k") == b"v"  # the same server, reached by its socket file
    finally:
        await commands.aclose()
        server.stop()
