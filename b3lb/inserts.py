"""The routing records of concurrent creates, written together (group commit).

At the top of the hour thousands of creates arrive within seconds. On its own each insert costs a
round trip, a socket write and a statement in PostgreSQL. Here a create's insert starts at the end
of the loop iteration it arrived in (with every other create of that iteration) while fewer than
`max_in_flight` are under way; creates arriving meanwhile wait for the next one, which writes all
of them with a single INSERT ... SELECT FROM unnest(...). A create answers SUCCESS only after the
statement's COMMIT (the pool's synchronous_commit decides how durable that is).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from b3lb.db import Q
from b3lb.outage import Outage

# secret id, meetingID, name, node id, end callback URL, recording-ready URL[, stored create (JSON, for a
# failover: b3lb/api/stored_create.py; absent or None: nothing stored)]
InsertArgs = tuple[int, str, str, int, str, str] | tuple[int, str, str, int, str, str, str | None]
INSERT_COLUMNS = 7


class MeetingInserts:
    def __init__(
        self, pool: asyncpg.Pool, *, max_in_flight: int = 2, max_batch: int = 500, outage: Outage | None = None
    ) -> None:
        self._pool = pool
        # Told when a write goes through, so the end of a database outage is logged at once; failures
        # reach each waiting create, whose answer reports them (b3lb/api/handler.py).
        self._outage = outage
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._queue: list[tuple[InsertArgs, asyncio.Future[Any]]] = []
        self._in_flight = 0
        self._starting = False  # a start is scheduled for the end of this loop iteration
        self._tasks: set[asyncio.Task[None]] = set()

    async def insert(self, args: InsertArgs) -> asyncpg.Record | None:
        """The new row, or None when the meeting exists already (another create won)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, future))
        if self._in_flight < self._max_in_flight and not self._starting:
            # Started once the loop has run what is ready now, not at once: the creates that arrived
            # together (32 clients: a handful per loop iteration) then share one statement.
            self._starting = True
            loop.call_soon(self._start_waiting)
        return await future

    def _start_waiting(self) -> None:
        self._starting = False
        if self._queue and self._in_flight < self._max_in_flight:
            self._start()

    def _start(self) -> None:
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._write(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, batch: list[tuple[InsertArgs, asyncio.Future[Any]]]) -> None:
        try:
            await self._settle(batch)
        except Exception as exc:  # a bug here must still answer every waiting create
            _fail(batch, exc)
        except BaseException:  # cancelled (shutdown): so are the creates waiting here
            for _, future in batch:
                future.cancel()
            raise
        finally:
            self._in_flight -= 1
            if self._queue and self._in_flight < self._max_in_flight:
                self._start()

    async def _settle(self, batch: list[tuple[InsertArgs, asyncio.Future[Any]]]) -> None:
        try:
            rows = await self._insert_rows([args for args, _ in batch])
        except asyncpg.PostgresError as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            # One bad row (say, of a secret deleted meanwhile) must not fail the others: one by one.
            for item in batch:
                await self._settle([item])
            return
        except Exception as exc:  # the database is unreachable or timed out: every create learns it
            _fail(batch, exc)
            return
        if self._outage is not None:
            self._outage.succeeded()
        won = {(row["secret_id"], row["meeting_id"]): row for row in rows}
        for args, future in batch:
            # pop: of two creates of one meeting in a batch, the first gets the row, the second None
            row = won.pop((args[0], args[1]), None)
            if not future.done():
                future.set_result(row)

    async def _insert_rows(self, rows: Sequence[InsertArgs]) -> list[asyncpg.Record]:
        full = [row if len(row) == INSERT_COLUMNS else (*row, None) for row in rows]
        columns = [list(column) for column in zip(*full, strict=True)]
        return await self._pool.fetch(Q.meetings_insert, *columns)


def _fail(batch: list[tuple[InsertArgs, asyncio.Future[Any]]], exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
