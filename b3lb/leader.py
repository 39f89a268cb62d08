"""One poller per database: the process holding a PostgreSQL advisory lock polls the fleet and
does the housekeeping; the others only refresh their in-memory tables from the database.

The lock lives on one pooled connection held for as long as this process leads. When the
leader dies its connection closes, the lock is released, and another process takes over at
its next attempt (at most one interval later).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import asyncpg

from b3lb.db import Q
from b3lb.outage import describe, is_database_unavailable
from b3lb.poller import Poller
from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.leader")

_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext('b3lb-poller:' || current_schema()))"
CLEANUP_EVERY = 3600.0  # seconds between deletions of expired metric rows


class Leadership:
    def __init__(self, runtime: Runtime, poller: Poller) -> None:
        self.runtime = runtime
        self.poller = poller
        self.conn: asyncpg.pool.PoolConnectionProxy | None = None
        self.leading = False
        self._last_cleanup: float | None = None  # monotonic time of the last metrics cleanup

    async def step(self) -> None:
        """One interval's work: try to lead; poll and keep house if leading."""
        if not await self._hold_lock():
            return
        await self.poller.poll_once()
        await self._housekeeping()

    async def _hold_lock(self) -> bool:
        try:
            if self.conn is None:
                self.conn = await self.runtime.pool.acquire()
            if self.leading:
                await self.conn.fetchval("SELECT 1")  # still connected means still holding the lock
                return True
            if await self.conn.fetchval(_TRY_LOCK):
                self.leading = True
                self.runtime.polling = True
                log.info("this process now polls the fleet")
            return self.leading
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            if self.leading or not is_database_unavailable(exc):
                log.warning("lost the poller lock connection: %s", exc)
            if is_database_unavailable(exc):  # each later attempt during the outage: counted, not logged
                self.runtime.database.failed(f"poller lock: {describe(exc)}")
            await self._release()
            return False

    async def _housekeeping(self) -> None:
        pool = self.runtime.pool
        try:
            await self.runtime.counters.flush(pool)
            await pool.execute(Q.metrics_snapshot)
            if self._last_cleanup is None or time.monotonic() - self._last_cleanup > CLEANUP_EVERY:
                await pool.execute(Q.metrics_cleanup, self.runtime.config.poller.metrics_retention_days)
                await pool.execute(Q.ended_cleanup)
                self._last_cleanup = time.monotonic()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            if is_database_unavailable(exc):
                self.runtime.database.failed(f"housekeeping: {describe(exc)}")
            else:
                log.warning("housekeeping failed: %s", exc)

    async def _release(self) -> None:
        if self.leading:
            log.info("this process no longer polls the fleet")
        self.leading = False
        self.runtime.polling = False
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await conn.execute("SELECT pg_advisory_unlock_all()")  # the pool does not reset sessions
                await self.runtime.pool.release(conn)
            except Exception:  # a broken connection: the pool discards it
                log.debug("releasing the lock connection failed", exc_info=True)

    async def run(self) -> None:
        config = self.runtime.config.poller
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception:  # one bad cycle must not end polling
                    log.exception("poll cycle failed")
                pause = config.interval + random.uniform(0, config.jitter) - (time.monotonic() - started)
                await asyncio.sleep(max(pause, 0.0))
        finally:
            await self._release()
