"""The Redis connection pool the score cache and the spend ledger each use.

Blocking, so a burst waits briefly for one of a few connections (a pipelined read or a
script takes well under a millisecond) instead of failing: redis-py's default pool raises
past its size. Warmed at start-up, because opening a connection costs far more than the
small per-call timeout allows, and a burst of cold connects would otherwise all time out.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
from redis.exceptions import RedisError

# Opening a connection (TCP, maybe TLS and AUTH) may take longer than one call is allowed.
_CONNECT_TIMEOUT_SECONDS = 2.0


def redis_client(url: str, timeout_seconds: float, max_connections: int) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=max(timeout_seconds, _CONNECT_TIMEOUT_SECONDS),
        # Retrying inside redis-py would stretch the bound; callers fall back instead.
        retry_on_timeout=False,
    )
    return aioredis.Redis.from_pool(pool)


async def warm_up(client: aioredis.Redis, connections: int) -> None:
    """Open `connections` pooled connections now; a Redis that is down is fine (logged by callers later)."""
    pool = client.connection_pool
    opened = []
    try:
        for _ in range(connections):
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                connection = await asyncio.wait_for(pool.get_connection(), _CONNECT_TIMEOUT_SECONDS)
                opened.append(connection)
    finally:
        for connection in opened:
            await pool.release(connection)
