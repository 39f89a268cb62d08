"""b3lb/meeting_sync.py against a real PostgreSQL: another instance reads only what changed, never
misses a write that commits late, and learns of every way a meeting row goes."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from b3lb.meetings import MeetingRef, MeetingTable
from b3lb.runtime import Runtime
from b3lb.testing.harness import Harness


@asynccontextmanager
async def other_instance(h: Harness, db_url: str) -> AsyncIterator[Runtime]:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    other = Runtime(h.config, pool)
    try:
        await other.refresh_directory()
        await other.refresh_meetings()
        yield other
    finally:
        await other.nodes.aclose()
        await pool.close()


async def create(h: Harness, meeting_id: str) -> int:
    r = await h.call("create", f"name=Room&meetingID={meeting_id}")
    assert b"SUCCESS" in r.body
    ref = h.runtime.meetings.get(h.tenants["ABC"].secrets[0][0], meeting_id)
    return ref.id


@pytest.mark.gen_test(timeout=30)
async def test_a_write_that_commits_after_a_read_is_read_next_time(db_url):
    async with Harness(db_url, nodes=1) as h:
        row_id = await create(h, "room-1")
        async with other_instance(h, db_url) as other:
            ref = other.meetings.by_id[row_id]
            assert ref.attendees == 0
            conn = await asyncpg.connect(db_url)
            try:
                late = conn.transaction()
                await late.start()
                await conn.execute("UPDATE meeting SET attendees = 7 WHERE id = $1", row_id)
                await other.refresh_meetings()  # the write is not committed yet: not visible
                assert other.meetings.by_id[row_id].attendees == 0
                await create(h, "room-2")  # a later transaction commits first
                await other.refresh_meetings()
                assert other.meetings.get(h.tenants["ABC"].secrets[0][0], "room-2") is not None
                await late.commit()
            finally:
                await conn.close()
            await other.refresh_meetings()
            assert other.meetings.by_id[row_id].attendees == 7


@pytest.mark.gen_test(timeout=30)
async def test_every_way_a_meeting_goes_reaches_the_other_instance(db_url):
    async with Harness(db_url, nodes=2) as h:
        ids = [await create(h, f"room-{n}") for n in range(6)]
        async with other_instance(h, db_url) as other:
            assert set(other.meetings.by_id) == set(ids)
            r = await h.call("end", "meetingID=room-0")  # through the API
            assert b"SUCCESS" in r.body
            await h.pool.execute("DELETE FROM meeting WHERE id = $1", ids[1])  # any other statement
            await other.refresh_meetings()
            assert ids[0] not in other.meetings.by_id and ids[1] not in other.meetings.by_id
            node_id = other.meetings.by_id[ids[2]].node_id
            on_node = {i for i, ref in other.meetings.by_id.items() if ref.node_id == node_id}
            await h.pool.execute("DELETE FROM node WHERE id = $1", node_id)  # cascades to its meetings
            await other.refresh_meetings()
            assert not on_node & set(other.meetings.by_id)
            assert set(other.meetings.by_id) == set(ids[2:]) - on_node


@pytest.mark.gen_test(timeout=30)
async def test_a_full_read_after_a_long_gap_forgets_what_went_meanwhile(db_url):
    async with Harness(db_url, nodes=1) as h:
        ids = [await create(h, f"room-{n}") for n in range(3)]
        async with other_instance(h, db_url) as other:
            await h.pool.execute("DELETE FROM meeting WHERE id = $1", ids[0])
            await h.pool.execute("DELETE FROM meeting_gone")  # as if pruned while this instance could not read
            other.meeting_sync.position = None  # what a gap longer than RESYNC_AFTER does
            for ref in other.meetings.by_id.values():
                ref.seen_at -= 60  # older than a create racing with the read
            await other.refresh_meetings()
            assert set(other.meetings.by_id) == set(ids[1:])
            assert other.meeting_sync.rows_read == 2


@pytest.mark.gen_test(timeout=30)
async def test_the_poll_cycle_prunes_old_gone_rows_only(db_url):
    async with Harness(db_url, nodes=1) as h:
        await create(h, "room-1")
        r = await h.call("end", "meetingID=room-1")
        assert b"SUCCESS" in r.body
        await h.pool.execute("INSERT INTO meeting_gone (id, gone_at) VALUES (424242, now() - interval '2 hours')")
        await h.poll()
        left = {r["id"] for r in await h.pool.fetch("SELECT id FROM meeting_gone")}
        assert 424242 not in left and len(left) == 1


def test_removal_times_are_pruned_oldest_first_a_bounded_number_at_a_time() -> None:
    table = MeetingTable()
    now = time.monotonic()
    for number in range(10):
        table.removed[number] = now - 100 + number  # the first five are older than 95 s
    table.forget_old_removals(95.5, at_most=3)
    assert list(table.removed) == list(range(3, 10))
    table.forget_old_removals(95.5)
    assert list(table.removed) == list(range(5, 10))


def test_indexes_are_rebuilt_once_the_table_has_halved() -> None:
    table = MeetingTable()
    refs = [MeetingRef(id=n, secret_id=1, meeting_id=f"m{n}", node_id=1, nonce=uuid.uuid4()) for n in range(100)]
    for ref in refs:
        table.add(ref)
    assert not table.compact_if_shrunk()
    for ref in refs[:60]:
        table.remove(ref)
    before = table.by_key
    assert table.compact_if_shrunk() and table.by_key is not before and len(table.by_key) == 40
    assert table.get(1, "m70") is refs[70] and table.by_id[70] is refs[70] and len(table.by_node[1]) == 40
