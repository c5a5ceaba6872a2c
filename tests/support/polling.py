"""Waiting for a condition instead of sleeping a fixed time and hoping it holds.

A test that sleeps and then asserts either waits too long on a quick machine or fails on a busy
one; these poll the condition until it holds or a deadline passes. The deadline bounds a hung
test, it is not a performance claim: on a shared machine give it seconds, not milliseconds.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

DEFAULT_TIMEOUT_SECONDS = 15.0
POLL_SECONDS = 0.02


class ConditionNotMet(AssertionError):
    """The condition did not hold within the deadline; an AssertionError, so pytest reports it as a failure."""


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = DEFAULT_TIMEOUT_SECONDS,
    what: str = "the condition", every: float = POLL_SECONDS,
) -> None:
    """Return as soon as `predicate()` (sync or async) is true; fail once `timeout` seconds pass without it.

    The predicate is looked at once more after the deadline, so a slow last poll still counts.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise ConditionNotMet(f"{what} did not hold within {timeout:g}s")
        await asyncio.sleep(every)


def eventually_sync(
    predicate: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT_SECONDS,
    what: str = "the condition", every: float = POLL_SECONDS,
) -> None:
    """`eventually` for code outside an event loop (subprocesses, threads)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise ConditionNotMet(f"{what} did not hold within {timeout:g}s")
        time.sleep(every)
