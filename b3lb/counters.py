"""Per-secret counters (joins, creates, limit hits, meeting durations) kept in memory.

The join path only increments a dict entry; a background task adds the deltas to the
`secret_counter` table in one statement per flush.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import asyncpg

from b3lb.db import Q

log = logging.getLogger("b3lb.counters")

LONG_MEETING = 12 * 3600


@dataclass(slots=True)
class CounterDelta:
    attendees_joined: int = 0
    meetings_created: int = 0
    meeting_duration_count: int = 0
    meeting_duration_seconds: int = 0
    attendee_limit_hits: int = 0
    meeting_limit_hits: int = 0


class Counters:
    def __init__(self) -> None:
        self.pending: dict[int, CounterDelta] = {}
        # Totals since start, per secret: what this process has counted (for metrics).
        self.totals: dict[int, CounterDelta] = {}

    def add(self, secret_id: int, name: str, amount: int = 1) -> None:
        for table in (self.pending, self.totals):
            delta = table.get(secret_id)
            if delta is None:
                delta = table[secret_id] = CounterDelta()
            setattr(delta, name, getattr(delta, name) + amount)

    async def flush(self, pool: asyncpg.Pool) -> int:
        """Write pending deltas; on failure they are kept for the next flush and the error is raised."""
        if not self.pending:
            return 0
        batch, self.pending = self.pending, {}
        ids = list(batch)
        columns = [[getattr(batch[i], f.name) for i in ids] for f in fields(CounterDelta)]
        try:
            await pool.execute(Q.counters_add, ids, *columns)
        except BaseException:  # kept for the next flush; the caller reports it (once per outage)
            for secret_id, delta in batch.items():
                for f in fields(CounterDelta):
                    self._merge_pending(secret_id, f.name, getattr(delta, f.name))
            raise
        return len(ids)

    def meeting_ended(self, secret_id: int, seconds: float | None) -> None:
        """Count a meeting's duration; meetings of 12 hours or more are left out (spec 4.6)."""
        if seconds is not None and 0 <= seconds < LONG_MEETING:
            self.add(secret_id, "meeting_duration_count")
            self.add(secret_id, "meeting_duration_seconds", int(seconds))

    def _merge_pending(self, secret_id: int, name: str, amount: int) -> None:
        delta = self.pending.setdefault(secret_id, CounterDelta())
        setattr(delta, name, getattr(delta, name) + amount)
