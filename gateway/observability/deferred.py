"""Work that many events need done once, a moment after the first of them, on the running loop.

The request log's write and the metrics' write to prometheus-client were done at the end of
each event-loop turn; at c=16 a turn holds one or two requests, so each request still paid a
write system call and a round of prometheus-client updates of its own. Done a fixed moment
after the first event instead, they are shared by every request of that moment whatever the
concurrency (docs/bench-history.md: 3-5% of a miss's CPU at c=16 and at c=64).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# Long enough to share one write among the requests of a busy moment, short against anything
# that reads the result (a log tail, a 15 s scrape, another worker's metrics files).
FLUSH_DELAY_SECONDS = 0.05


class Deferred:
    """Calls `work` `delay` seconds after the first `book()` since it last ran.

    Off a running loop (start-up, a script, another thread) `book` returns False and the caller
    does the work at once. A loop closed before the call came is forgotten: the next `book`, on
    whichever loop runs then, books it there.
    """

    __slots__ = ("_delay", "_loop", "_work")

    def __init__(self, work: Callable[[], None], delay: float = FLUSH_DELAY_SECONDS) -> None:
        self._work = work
        self._delay = delay
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the call is booked on

    def book(self) -> bool:
        """The work will run on a loop within `delay`: True; False if there is no running loop to book."""
        booked = self._loop
        if booked is not None and not booked.is_closed():
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
            return False
        self._loop = loop
        loop.call_later(self._delay, self._run)
        return True

    def _run(self) -> None:
        self._loop = None
        self._work()
