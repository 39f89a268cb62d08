"""Background work's share of the event loop: one slice of it per loop turn, whoever does it.

Background coroutines (the poll cycle reading node answers and folding them in, the meeting
refresh) cut their Python work into slices of about SLICE_SECONDS and let the loop run between
them. Yielding alone did not bound a loop turn: twenty pollers that each yield after 2 ms are
all ready again on the next turn, and that turn ran all twenty slices, 40-80 ms in which no
request was answered (issue 12, the `scale` benchmark's lag). A Slices object is held by the one
coroutine whose slice runs; the others wait for it, so a turn runs one slice besides the
requests. API requests never take it.

Hold it only around Python work: a coroutine that waited for the network or the database while
holding it would stall every other background task (never the API).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

SLICE_SECONDS = 0.002  # Python work in a row before the API gets a turn (issue 12: loop lag <= 20 ms)


class Slices:
    """The right to run background Python work now; see the module docstring.

    The right passes straight from the coroutine that pauses to the next one waiting, by resolving
    that one's future: the new holder runs on the next loop turn, never on the same one."""

    def __init__(self, seconds: float = SLICE_SECONDS) -> None:
        self.seconds = seconds
        self._busy = False
        self._holder: asyncio.Task[object] | None = None
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._until = 0.0
        self.handovers = 0  # pauses that let another coroutine's slice run (tests, and curiosity)

    @asynccontextmanager
    async def held(self) -> AsyncIterator[Slices]:
        """Hold the right for a stretch of work; `await slices.tick()` inside it often."""
        if self._busy:
            await self._wait()
        self._busy = True
        self._take()
        try:
            yield self
        finally:
            if self._holder is asyncio.current_task():
                self._holder = None
                self._give()

    def due(self) -> bool:
        """Whether the current slice has run its time."""
        return time.perf_counter() > self._until

    async def tick(self) -> None:
        """Pause if the slice has run its time."""
        if time.perf_counter() > self._until:
            await self.pause()

    async def pause(self) -> None:
        """Let the API run a loop turn, and the coroutine waiting longest its slice, then go on."""
        self._holder = None
        if self._give():
            self.handovers += 1
            await self._wait()
        else:  # nobody waits (a cancelled waiter may still be queued): keep the right over the turn
            self._busy = True
            await asyncio.sleep(0)
        self._take()

    def _take(self) -> None:
        self._holder = asyncio.current_task()
        self._until = time.perf_counter() + self.seconds

    def _give(self) -> bool:
        """Hand the right to the first coroutine still waiting (True), or free it (False)."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        self._busy = False
        return False

    async def _wait(self) -> None:
        """Queue up until the right is handed over (it stays busy meanwhile)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed over as the cancel came: pass it on
                self._give()
            elif waiter in self._waiting:
                self._waiting.remove(waiter)
            raise
