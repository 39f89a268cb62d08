"""Keeps this process's routing table in step with the `meeting` table, reading only what changed.

Every read remembers the oldest transaction still running when it read (`pg_snapshot_xmin`); the
next one reads the meetings written, and the ids deleted, by that transaction or later ones
(sql/0007_meeting_sync.sql). A write that commits late is thus read next time, whatever order
transactions commit in; a row may be read twice, which changes nothing. The rows arrive through a
cursor in batches, and the loop gets a turn after each batch, so even a full read of 100,000
meetings never holds the API up for more than a few milliseconds.
"""

from __future__ import annotations

import time

import asyncpg

from b3lb.db import Q
from b3lb.meetings import MeetingTable
from b3lb.slices import Slices

BATCH = 1000  # rows per cursor fetch: about a millisecond of Python each
STEP = 100  # rows applied between two looks at the clock (b3lb/slices.py)
# The poll cycle prunes meeting_gone rows older than this (b3lb/poller.py); a process that could
# not read for half of it reads everything again instead of trusting its last position.
GONE_KEEP_SECONDS = 3600.0
RESYNC_AFTER = GONE_KEEP_SECONDS / 2
# A local record missing from a full read is kept when it is younger than this: its create may
# have committed after the read's snapshot was taken.
FULL_READ_MARGIN = 5.0


class MeetingSync:
    def __init__(self, pool: asyncpg.Pool, meetings: MeetingTable, keep_removed: float, slices: Slices) -> None:
        self.pool = pool
        self.meetings = meetings
        self.slices = slices  # the loop's background share: a full read applies 100,000 rows
        self.keep_removed = keep_removed  # seconds an ended meeting's id is remembered
        self.position: str | None = None  # xmin of the last read (xid8 as text); None: read everything
        self.synced_at = 0.0
        self.rows_read = 0  # of the last read, for tests and logs

    async def refresh(self, *, polling: bool) -> None:
        """Apply what changed since the last read (everything on the first, or after a long gap)."""
        full = self.position is None or time.monotonic() - self.synced_at > RESYNC_AFTER
        started = time.monotonic()
        self.meetings.forget_old_removals(self.keep_removed)
        seen: set[int] = set()
        read = 0
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            position = await conn.fetchval(Q.meetings_xmin)
            if full:
                cursor = await conn.cursor(Q.meetings_all)
            else:
                cursor = await conn.cursor(Q.meetings_changed, self.position)
            while rows := await cursor.fetch(BATCH):
                read += len(rows)
                async with self.slices.held() as slices:
                    for number, row in enumerate(rows, 1):
                        self.meetings.apply_row(row, polling=polling)
                        if number % STEP == 0:
                            await slices.tick()
                    if full:
                        seen.update(row["id"] for row in rows)
            gone = [] if full else [row["id"] for row in await conn.fetch(Q.meetings_gone, self.position)]
        if full:  # what the database does not hold any more, except creates younger than the read
            before = started - FULL_READ_MARGIN
            gone = [i for i, ref in self.meetings.by_id.items() if i not in seen and ref.seen_at < before]
        self.meetings.forget_ids(gone)
        self.position, self.synced_at, self.rows_read = position, time.monotonic(), read
