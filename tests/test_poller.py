"""The fleet watcher against fake nodes over real HTTP and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from api_helpers import owner, set_node
from lxml import etree

from b3lb.meeting_lists import stored_elements
from b3lb.poller import parse_load
from b3lb.runtime import Runtime
from b3lb.testing.fakebbb import FakeMeeting
from b3lb.testing.harness import Harness


def xml(response):
    return etree.fromstring(response.body)


def node_entry(h: Harness, index: int):
    node = h.fleet.nodes[index]
    return next(e for e in h.runtime.loads.nodes.values() if e.node.domain == node.domain)


async def create(h: Harness, meeting_id: str, extra: str = "", **kwargs) -> int:
    r = await h.call("create", f"name=Room+{meeting_id}&meetingID={meeting_id}{extra}", **kwargs)
    assert xml(r).findtext("returncode") == "SUCCESS", r.body
    ref = h.runtime.meetings.get(h.tenants[kwargs.get("slug", "ABC")].secrets[kwargs.get("sub_id", 0)][0], meeting_id)
    return next(i for i, n in enumerate(h.fleet.nodes) if meeting_id in n.meetings and ref is not None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b"5713\n", 57.13), (b"5713", 57.13), (b"abc", None), (b"", None), (b"20000\n", 100.0), (b"-5\n", 0.0)],
)
def test_parse_load(body, expected):
    assert parse_load(body) == expected


@pytest.mark.gen_test(timeout=30)
async def test_a_node_is_polled_over_one_kept_alive_connection(db_url):
    """getMeetings and then the load file on the same connection: one per node, kept across cycles."""
    async with Harness(db_url, nodes=3) as h:
        for fake in h.fleet.nodes:
            fake.cpu = 2500
        for _ in range(3):
            await h.poll()
        assert all(node_entry(h, i).node.cpu_load == 25.0 for i in range(3))
        connector = h.runtime.nodes._pools["poll"].session.connector
        assert sorted(len(kept) for kept in connector._conns.values()) == [1, 1, 1]
        h.fleet.nodes[0].set_down()
        await h.poll()  # a node that does not answer is not asked for its load as well
        assert node_entry(h, 0).node.cpu_load == 25.0


@pytest.mark.gen_test(timeout=30)
async def test_poll_updates_loads_counts_and_database(db_url):
    async with Harness(db_url, nodes=2) as h:
        fake = h.fleet.nodes[0]
        fake.cpu = 5000
        fake.populate(3, 4)  # meetings b3lb does not own still count for the node's load
        fake.add_meeting(FakeMeeting(meeting_id="breakout-1", name="Breakout", is_breakout=True))
        fake.add_attendees("breakout-1", 7)
        await h.poll()
        entry = node_entry(h, 0)
        assert entry.node.cpu_load == 50.0
        assert (entry.node.attendees, entry.node.meetings) == (12, 3)
        c = entry.cluster
        cpu = c.load_cpu_maximum / c.load_cpu_series_iteratations * sum(0.5**k for k in range(1, 7))
        assert entry.load == pytest.approx(12 * c.load_a_factor + 3 * c.load_m_factor + cpu)
        row = await h.pool.fetchrow("SELECT cpu_load, attendees, meetings, has_errors, last_poll_ok FROM node "
                                    "WHERE domain = $1", fake.domain)
        assert (row["cpu_load"], row["attendees"], row["meetings"], row["has_errors"]) == (50.0, 12, 3, False)
        assert row["last_poll_ok"] is not None


@pytest.mark.gen_test(timeout=30)
async def test_a_failed_poll_is_followed_by_a_probe_at_once(db_url):
    """poller.probe_failed (the shipped default): the second failure in a row comes from an extra
    poll right after the cycle, not from the next cycle; a slow node's single failure stays one."""
    async with Harness(db_url, nodes=2, poller={"probe_failed": True}) as h:
        fake, entry = h.fleet.nodes[1], node_entry(h, 1)
        fake.set_down()
        await h.poll()
        stored = "SELECT has_errors FROM node WHERE id = $1"
        for _ in range(100):  # bounded: the probe runs (and stores its verdict) in the background
            if entry.node.has_errors and await h.pool.fetchval(stored, entry.node.id):
                break
            await asyncio.sleep(0.02)
        assert entry.node.has_errors and await h.pool.fetchval(stored, entry.node.id)
        fake.set_up()
        await h.poll()
        assert entry.node.has_errors  # recovery keeps its hysteresis: no probe after a good poll
        await h.poll()
        assert not entry.node.has_errors
        # A slow node (a timeout) is not probed: it needs error_after failed cycles.
        slow, slow_entry = h.fleet.nodes[0], node_entry(h, 0)
        slow.mode, slow.delay = "stall", 2.0  # longer than the harness's 1 s poll timeout
        await h.poll()
        await asyncio.sleep(0.3)
        assert not slow_entry.node.has_errors and slow_entry.failures == 1


@pytest.mark.gen_test(timeout=30)
async def test_error_state_has_hysteresis_both_ways(db_url):
    async with Harness(db_url, nodes=2) as h:
        fake = h.fleet.nodes[1]
        entry = node_entry(h, 1)
        fake.set_down()
        await h.poll()
        assert not entry.node.has_errors  # one failure is not enough (error_after = 2)
        await h.poll()
        assert entry.node.has_errors and entry.load == -1
        row = await h.pool.fetchrow("SELECT has_errors, last_poll_error FROM node WHERE id = $1", entry.node.id)
        assert row["has_errors"] and row["last_poll_error"]
        fake.set_up()
        await h.poll()
        assert entry.node.has_errors  # one good poll is not enough (recover_after = 2)
        await h.poll()
        assert not entry.node.has_errors and entry.load >= 0
        assert not await h.pool.fetchval("SELECT has_errors FROM node WHERE id = $1", entry.node.id)


@pytest.mark.parametrize("mode", ["garbage", "error", "failed"])
@pytest.mark.gen_test(timeout=30)
async def test_bad_answers_count_as_failures(db_url, mode):
    async with Harness(db_url, nodes=1) as h:
        h.fleet.nodes[0].mode = mode
        results = await h.poll()
        assert not results[0].ok and results[0].error
        await h.poll()
        assert node_entry(h, 0).node.has_errors
        r = await h.call("create", "name=Room&meetingID=m1")
        assert xml(r).findtext("message") == "No Node available."


@pytest.mark.gen_test(timeout=30)
async def test_slow_node_delays_neither_other_nodes_nor_the_api(db_url):
    async with Harness(db_url, nodes=3, poller={"timeout": 1.5}) as h:
        h.fleet.nodes[0].mode = "slow"
        h.fleet.nodes[0].delay = 1.0
        poll = asyncio.ensure_future(h.poll())
        started = time.perf_counter()
        r = await h.request("/b3lb/ping")
        assert r.body == b"OK!" and time.perf_counter() - started < 0.5
        results = await poll
        assert all(r.ok for r in results)
        fast = [h.runtime.poller.poll_seconds[node_entry(h, i).node.id] for i in (1, 2)]
        assert max(fast) < 0.5 and h.runtime.poller.poll_seconds[node_entry(h, 0).node.id] >= 1.0


@pytest.mark.gen_test(timeout=30)
async def test_a_vanished_meeting_moved_meanwhile_keeps_its_new_row(db_url):
    """The poller deletes only the placement it saw: a row a failover (another process) moved to a
    new nonce after this process's last read stays."""
    async with Harness(db_url, nodes=1, poller={"meeting_grace": 0.0}) as h:
        await create(h, "room-1")
        await create(h, "room-2")
        await h.poll()
        moved = await h.pool.fetchval(
            "UPDATE meeting SET nonce = gen_random_uuid() WHERE meeting_id = 'room-1' RETURNING nonce")
        h.fleet.nodes[0].remove_meeting("room-1")
        h.fleet.nodes[0].remove_meeting("room-2")
        await h.poll()  # both vanish from this process's view of the node
        rows = await h.pool.fetch("SELECT meeting_id, nonce FROM meeting")
        assert [(r["meeting_id"], r["nonce"]) for r in rows] == [("room-1", moved)]
        assert await h.pool.fetchval("SELECT count(*) FROM meeting_ended WHERE meeting_id = 'room-2'") == 1


@pytest.mark.gen_test(timeout=30)
async def test_a_long_cycle_keeps_a_meeting_its_node_was_asked_about_before_it_existed(db_url):
    """The grace counts from when the node was asked, not from the cycle's end: a cycle slowed by
    another node must not drop a meeting created after its own node had answered (scale benchmark)."""
    async with Harness(db_url, nodes=2, poller={"timeout": 5.0, "meeting_grace": 0.5}) as h:
        slow, fast = h.fleet.nodes
        await set_node(h, slow, maintenance=True)  # creates go to the fast node
        await h.reload()
        slow.mode, slow.delay = "slow", 1.5
        cycle = asyncio.ensure_future(h.poll())
        await asyncio.sleep(0.3)  # the fast node has answered (without the meeting), the slow one not
        await create(h, "late")
        assert owner(h, "late") is fast
        await cycle  # ends over a second after the create, more than the grace
        secret_id = h.tenants["ABC"].secrets[0][0]
        assert h.runtime.meetings.get(secret_id, "late") is not None
        assert await h.pool.fetchval("SELECT count(*) FROM meeting WHERE meeting_id = 'late'") == 1
        slow.mode = "ok"
        await h.poll()  # the next cycle asks the fast node after the create: listed, kept
        assert h.runtime.meetings.get(secret_id, "late") is not None
        fast.remove_meeting("late")
        await asyncio.sleep(0.6)
        await h.poll()  # gone from its node, asked for after the grace: dropped
        assert h.runtime.meetings.get(secret_id, "late") is None


@pytest.mark.gen_test(timeout=30)
async def test_meeting_counts_and_vanishing_meetings(db_url):
    async with Harness(db_url, nodes=1, poller={"meeting_grace": 0.0}) as h:
        await create(h, "room-1", "&meta_bbb-origin=greenlight&meta_bbb-origin-server-name=gl.example.org")
        fake = h.fleet.nodes[0]
        fake.add_attendees("room-1", 3)
        await h.poll()
        row = await h.pool.fetchrow(
            "SELECT attendees, origin, origin_server_name FROM meeting WHERE meeting_id = 'room-1'")
        assert tuple(row) == (3, "greenlight", "gl.example.org")
        fake.remove_meeting("room-1")
        await h.poll()
        assert await h.pool.fetchval("SELECT count(*) FROM meeting") == 0
        assert await h.pool.fetchval("SELECT count(*) FROM meeting_ended WHERE meeting_id = 'room-1'") == 1
        delta = h.runtime.counters.pending[h.tenants["ABC"].secrets[0][0]]
        assert delta.meeting_duration_count == 1
        r = await h.call("isMeetingRunning", "meetingID=room-1")
        assert xml(r).findtext("running") == "false"


@pytest.mark.gen_test(timeout=30)
async def test_unchanged_meeting_keeps_its_copy_and_a_changed_one_is_read_again(db_url):
    async with Harness(db_url, nodes=1) as h:
        await create(h, "room-1")
        fake = h.fleet.nodes[0]
        fake.add_attendees("room-1", 2)
        await h.poll()
        ref = h.runtime.meetings.get(h.tenants["ABC"].secrets[0][0], "room-1")
        first = ref.polled
        assert ref.listed and first is not None and first[0] == 2
        xid = "SELECT changed_xid::text FROM meeting WHERE meeting_id = 'room-1'"
        written = await h.pool.fetchval(xid)
        await h.poll()  # the node sends the same element again: nothing is written
        assert ref.polled is first and await h.pool.fetchval(xid) == written
        fake.add_attendees("room-1", 3)
        await h.poll()  # now it differs: read again, counted and written
        assert ref.polled is not first and ref.polled[0] == 5 and ref.polled[-1] != first[-1]
        element = await h.pool.fetchval("SELECT xml FROM meeting WHERE meeting_id = 'room-1'")
        assert "<participantCount>5</participantCount>" in element
        assert await h.pool.fetchval("SELECT attendees FROM meeting WHERE meeting_id = 'room-1'") == 5
        r = await h.call("getMeetings", "")
        assert [m.findtext("participantCount") for m in xml(r).iterfind("meetings/meeting")] == ["5"]


@pytest.mark.gen_test(timeout=30)
async def test_fresh_meeting_survives_a_poll_that_raced_its_create(db_url):
    async with Harness(db_url, nodes=1) as h:  # default grace 15 s
        await create(h, "room-1")
        h.fleet.nodes[0].remove_meeting("room-1")  # as if the node's answer predates the create
        await h.poll()
        assert await h.pool.fetchval("SELECT count(*) FROM meeting") == 1
        assert h.runtime.meetings.get(h.tenants["ABC"].secrets[0][0], "room-1") is not None


@pytest.mark.gen_test(timeout=30)
async def test_get_meetings_keeps_last_state_then_drops_node_in_error(db_url):
    async with Harness(db_url, nodes=1) as h:
        await create(h, "room-1")
        await h.poll()
        r = await h.call("getMeetings")
        assert xml(r).findtext("meetings/meeting/meetingID") == "room-1"
        h.fleet.nodes[0].set_down()
        await h.poll()  # first failure: last known state stays
        r = await h.call("getMeetings")
        assert xml(r).findtext("meetings/meeting/meetingID") == "room-1"
        await h.poll()  # node in error: its meetings disappear, the call still succeeds
        r = await h.call("getMeetings")
        assert xml(r).findtext("returncode") == "SUCCESS" and xml(r).findtext("messageKey") == "noMeetings"


@pytest.mark.gen_test(timeout=30)
async def test_other_instances_read_only_the_meetings_that_changed(db_url):
    """Issue 12: each meeting's element lives in its row; another instance reads the changed rows only."""
    async with Harness(db_url, nodes=2, tenants=("ABC", "XYZ")) as h:
        await create(h, "room-1")
        for number in range(20):
            await create(h, f"other-{number}", slug="XYZ")
        await h.poll()
        secret_id = h.tenants["ABC"].secrets[0][0]
        here = h.runtime.meetings.get(secret_id, "room-1")
        stored = await h.pool.fetchval("SELECT xml FROM meeting WHERE id = $1", here.id)
        assert here.listed and stored.count("<meeting>") == 1 and "<meetingID>room-1</meetingID>" in stored
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
        other = Runtime(h.config, pool)  # another instance: it does not poll
        try:
            await other.refresh_directory()
            await other.refresh_meetings()
            assert len(other.meetings) == 21 and other.meetings.get(secret_id, "room-1").listed
            version = other.meetings.versions[secret_id]
            fake = next(n for n in h.fleet.nodes if n.domain == h.runtime.loads.nodes[here.node_id].node.domain)
            fake.add_attendees("room-1", 3)
            await h.poll()
            position = other.meeting_sync.position
            await other.refresh_meetings()
            there = other.meetings.get(secret_id, "room-1")
            # its getMeetings answer there is stale now: built again from the row's new element
            assert there.attendees == 3 and there.listed and other.meetings.versions[secret_id] > version
            assert b"<participantCount>3</participantCount>" in (await stored_elements(pool, [there.id]))[there.id]
            # The 20 unchanged meetings are not read again, unless a transaction that was still
            # running at the last read (anywhere in this PostgreSQL: other test runs) holds the
            # position before their writes: then they must be read again, since it might change them.
            unchanged_written_after = await h.pool.fetchval(
                "SELECT count(*) FROM meeting WHERE meeting_id LIKE 'other-%' AND changed_xid >= $1::text::xid8",
                position)
            assert other.meeting_sync.rows_read == 1 + unchanged_written_after
            r = await h.call("end", "meetingID=room-1")
            assert xml(r).findtext("returncode") == "SUCCESS"
            await other.refresh_meetings()
            assert other.meetings.get(secret_id, "room-1") is None and len(other.meetings) == 20
        finally:
            await other.nodes.aclose()
            await pool.close()


@pytest.mark.gen_test(timeout=30)
async def test_limits_count_polled_attendees(db_url):
    async with Harness(db_url, nodes=1) as h:
        await h.pool.execute("UPDATE tenant SET attendee_limit = 5")
        await h.reload()
        await create(h, "room-1")
        h.fleet.nodes[0].add_attendees("room-1", 5)
        r = await h.call("create", "name=Room+2&meetingID=room-2")
        assert xml(r).findtext("returncode") == "SUCCESS"  # not polled yet: 0 attendees known
        await h.poll()
        r = await h.call("create", "name=Room+3&meetingID=room-3")
        assert xml(r).findtext("message") == "Meeting/Attendee limit reached."
