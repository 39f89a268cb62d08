"""getMeetings answers, kept per secret set while nothing they show has changed.

The elements themselves live in the meeting rows (the poller writes each changed one), not in
memory: 100,000 elements would hold some 150 MB in every process. An answer is built from one
query for the elements of the caller's meetings and kept, up to MAX_BYTES of answers in all, until
a meeting of those secrets comes, goes or changes, or a node goes into or out of error (the stamp:
MeetingTable.versions and LoadTable.health_version). Meetings created since their node's last
poll have no element in their row yet; getmeetings.py asks their nodes and keeps those few
elements here (`fetched`) until the poll brings the node's own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import asyncpg

from b3lb.db import Q

MAX_BYTES = 32 * 1024 * 1024  # answers kept, in all; the least recently used go first
MAX_FETCHED = 10_000  # elements of not yet polled meetings kept at most

Stamp = tuple[int, ...]


class MeetingLists:
    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.answers: OrderedDict[tuple[int, ...], tuple[Stamp, bytes]] = OrderedDict()
        self.size = 0
        # meeting row id -> its element from a getMeetingInfo call, until its row has one
        self.fetched: dict[int, bytes] = {}
        self.hits = self.misses = 0

    def cached(self, key: tuple[int, ...], stamp: Stamp) -> bytes | None:
        found = self.answers.get(key)
        if found is None or found[0] != stamp:
            self.misses += 1
            return None
        self.answers.move_to_end(key)
        self.hits += 1
        return found[1]

    def keep(self, key: tuple[int, ...], stamp: Stamp, answer: bytes) -> None:
        old = self.answers.pop(key, None)
        if old is not None:
            self.size -= len(old[1])
        if len(answer) > self.max_bytes // 4:
            return  # one huge tenant must not push every other answer out
        self.answers[key] = (stamp, answer)
        self.size += len(answer)
        while self.size > self.max_bytes:
            _, (_, dropped) = self.answers.popitem(last=False)
            self.size -= len(dropped)

    def remember_fetched(self, meeting_row_id: int, element: bytes) -> None:
        if len(self.fetched) >= MAX_FETCHED:
            self.fetched.pop(next(iter(self.fetched)))  # the oldest; asked for again if still needed
        self.fetched[meeting_row_id] = element

    def forget_fetched(self, meeting_row_ids: Iterable[int]) -> None:
        for meeting_row_id in meeting_row_ids:
            self.fetched.pop(meeting_row_id, None)

    def clear(self) -> None:
        self.answers.clear()
        self.size = 0


async def stored_elements(pool: asyncpg.Pool, meeting_row_ids: list[int]) -> dict[int, bytes]:
    """The elements the rows of these meetings hold (rows without one, or gone, are left out)."""
    if not meeting_row_ids:
        return {}
    rows = await pool.fetch(Q.meeting_elements, meeting_row_ids)
    return {row["id"]: row["xml"] for row in rows}
