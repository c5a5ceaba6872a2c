"""This process standing still under a Redis call: what a CPU-bound stretch, a GC pause or the OS
running something else does to it.

A stall that starts while a call waits for its reply may end after the reply is read (Redis on
loopback answers within the same loop turn), and the call then finishes in time. A call that needs
one more round trip after the stall cannot: a Redis that lost its scripts (SCRIPT FLUSH, as after a
restart) answers NOSCRIPT, and the script must be loaded and sent again, past the bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import redis


def stall_the_next_call(seconds: float, servers: Iterable[redis.Redis]) -> None:
    """The next Redis call of this process overruns its bound (if shorter than `seconds`) while this
    process stands still, though Redis answers at once."""
    for server in servers:
        server.script_flush()
    asyncio.get_running_loop().call_soon(time.sleep, seconds)
