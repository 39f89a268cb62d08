"""A bound on the bytes that concurrent tasks hold at once (the poller's node answers in flight).

A task takes an estimate of what it will hold before it starts and gives it back when done. One
task is always let through, however large its estimate, so nothing waits forever.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0  # the most taken at once, for tests and benchmarks
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def take(self, size: int) -> AsyncIterator[None]:
        if self._waiting or not self._fits(size):
            future = asyncio.get_running_loop().create_future()
            self._waiting.append((size, future))
            try:
                await future  # resolved by _wake, which has already counted `size` as taken
            except BaseException:
                if future.done() and not future.cancelled():
                    self._give_back(size)
                else:
                    self._waiting.remove((size, future))
                    self._wake()
                raise
        else:
            self._count(size)
        try:
            yield
        finally:
            self._give_back(size)

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.limit

    def _count(self, size: int) -> None:
        self.used += size
        self.peak = max(self.peak, self.used)

    def _give_back(self, size: int) -> None:
        self.used -= size
        self._wake()

    def _wake(self) -> None:
        """Let waiters in, first come first served, while they fit."""
        while self._waiting and self._fits(self._waiting[0][0]):
            size, future = self._waiting.popleft()
            if not future.done():
                self._count(size)
                future.set_result(None)
