"""Nodes that fail calls (issue 9, items 1-3): creates go to the next node when a node certainly
failed them, unanswered creates stay known until a poll decides, and the poller alone judges health."""

from __future__ import annotations

import asyncio
import time

import pytest
from api_helpers import (
    NO_NODE,
    children,
    create,
    create_ok,
    meeting_rows,
    node_id,
    q,
    sent,
    xml,
)

from b3lb.testing.fakebbb import FakeMeeting
from b3lb.testing.harness import Harness


async def assert_node_unavailable(h: Harness, call: str, query: str) -> None:
    started = time.monotonic()
    r = await h.call(call, query)
    elapsed = time.monotonic() - started
    assert elapsed < 3.5, elapsed  # node_request_timeout is 2 s
    assert r.code == 200
    doc = xml(r)
    assert doc.findtext("returncode") == "FAILED" and doc.findtext("messageKey") == "nodeUnavailable", r.body


async def node_in_error(h: Harness, node) -> bool:  # noqa: ANN001
    in_db = await h.pool.fetchval("SELECT has_errors FROM node WHERE slug = $1", node.name)
    in_memory = h.runtime.loads.nodes[node_id(h, node)].node.has_errors
    assert in_db == in_memory
    return in_memory


def entry_of(h: Harness, node):  # noqa: ANN001, ANN201
    return h.runtime.loads.nodes[node_id(h, node)]


async def wait_for(condition, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# -- item 1: a create the node certainly failed goes to the next node ----------------------------


@pytest.mark.parametrize("mode", ["failed", "error", "garbage", "stall-free-down"])
@pytest.mark.gen_test(timeout=60)
async def test_creates_avoid_a_node_that_fails_them(db_url, mode):
    """18 creates with one node failing every create (its polls look healthy): all 18 succeed."""
    async with Harness(db_url, nodes=3) as h:
        bad, *good = h.fleet.nodes
        if mode == "stall-free-down":
            bad.set_down()  # refused: the request never reached it
        else:
            bad.call_modes = {"create": mode}
        for i in range(18):
            await create_ok(h, f"m-{i}")
        assert not bad.meetings
        assert sum(len(n.meetings) for n in good) == 18
        rows = await meeting_rows(h)
        assert len(rows) == 18 and all(r["node_id"] != node_id(h, bad) for r in rows)
        # the first failure puts the node on a back-off: it is not offered every create
        if mode != "stall-free-down":
            assert 1 <= len(sent(bad, "create")) <= 2
        # every routing record points at a node that has the meeting
        for row in rows:
            host = next(n for n in h.fleet.nodes if node_id(h, n) == row["node_id"])
            assert row["meeting_id"] in host.meetings
            assert f"nonce={row['nonce']}" in host.meetings[row["meeting_id"]].create_params["meta_endCallbackUrl"]


@pytest.mark.gen_test(timeout=60)
async def test_create_tries_a_bounded_number_of_nodes(db_url):
    async with Harness(db_url, nodes=4, create_attempts=2) as h:
        for node in h.fleet.nodes:
            node.call_modes = {"create": "error"}
        r = await create(h, "doomed")
        assert xml(r).findtext("returncode") == "FAILED"
        assert sum(len(sent(n, "create")) for n in h.fleet.nodes) == 2
        assert await meeting_rows(h, "doomed") == []
        assert all(e.pending_meetings == 0 for e in h.runtime.loads.nodes.values())


@pytest.mark.gen_test(timeout=60)
async def test_a_failed_caused_by_the_request_goes_back_unchanged(db_url):
    """idNotUnique is the request's fault: no second node is tried, nothing is kept."""
    async with Harness(db_url, nodes=2) as h:
        for node in h.fleet.nodes:  # the ID exists on both nodes with other passwords
            node.add_meeting(FakeMeeting(meeting_id="taken", name="Other", attendee_pw="x1", moderator_pw="x2"))
        r = await create(h, "taken", extra=q(moderatorPW="mine", attendeePW="ours"))
        assert xml(r).findtext("messageKey") == "idNotUnique", r.body
        assert sum(len(sent(n, "create")) for n in h.fleet.nodes) == 1
        assert await meeting_rows(h, "taken") == []


@pytest.mark.gen_test(timeout=60)
async def test_an_existing_meeting_is_never_moved_by_a_failed_create(db_url):
    async with Harness(db_url, nodes=2) as h:
        await create_ok(h, "room")
        (row,) = await meeting_rows(h, "room")
        host = next(n for n in h.fleet.nodes if "room" in n.meetings)
        host.call_modes = {"create": "failed"}
        r = await h.call("create", "meetingID=room&name=Room")
        assert xml(r).findtext("messageKey") == "internalError"
        assert await meeting_rows(h, "room") == [row]
        other = next(n for n in h.fleet.nodes if n is not host)
        assert not sent(other, "create")


# -- item 2: a create whose answer never came ------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_timed_out_create_that_the_node_made_stays_routed(db_url):
    async with Harness(db_url, nodes=2) as h:
        first = h.fleet.nodes[0]
        h.fleet.nodes[1].set_down()
        first.call_modes, first.delay = {"create": "slow"}, 2.5  # answers after b3lb gave up, but creates
        await assert_node_unavailable(h, "create", "meetingID=late&name=Room")
        (row,) = await meeting_rows(h, "late")  # kept: the node may have it
        assert row["node_id"] == node_id(h, first)
        # a retried create goes to the same node, never to a second one
        h.fleet.nodes[1].set_up()
        await h.reload()
        await wait_for(lambda: "late" in first.meetings)
        first.call_modes = {}
        await create_ok(h, "late")
        assert "late" not in h.fleet.nodes[1].meetings
        await h.poll()
        assert [r["id"] for r in await meeting_rows(h, "late")] == [row["id"]]
        r = await h.call("join", "meetingID=late&fullName=A&role=VIEWER")
        assert r.code == 302 and first.domain in r.headers["Location"]


@pytest.mark.gen_test(timeout=60)
async def test_a_timed_out_create_is_confirmed_by_the_next_poll(db_url):
    async with Harness(db_url, nodes=1) as h:
        node = h.fleet.nodes[0]
        node.call_modes, node.delay = {"create": "slow"}, 2.5
        await assert_node_unavailable(h, "create", "meetingID=late&name=Room")
        ref = h.runtime.meetings.get(h.tenants["ABC"].secrets[0][0], "late")
        assert ref is not None and ref.uncertain_since > 0
        await wait_for(lambda: "late" in node.meetings)
        await h.poll()
        assert ref.uncertain_since == 0.0 and len(await meeting_rows(h, "late")) == 1
        r = await h.call("getMeetingInfo", "meetingID=late")
        assert xml(r).findtext("returncode") == "SUCCESS"


@pytest.mark.gen_test(timeout=60)
async def test_a_timed_out_create_the_node_never_made_is_dropped_by_the_next_poll(db_url):
    async with Harness(db_url, nodes=1) as h:
        node = h.fleet.nodes[0]
        node.call_modes, node.delay = {"create": "stall"}, 2.5  # takes the request, never creates
        await assert_node_unavailable(h, "create", "meetingID=lost&name=Room")
        assert len(await meeting_rows(h, "lost")) == 1
        await asyncio.sleep(0.6)  # the stalled connection is dropped; nothing was created
        assert "lost" not in node.meetings
        node.call_modes = {}
        await h.poll()  # began after the create gave up and does not list it
        assert await meeting_rows(h, "lost") == []
        assert h.runtime.meetings.get(h.tenants["ABC"].secrets[0][0], "lost") is None
        await create_ok(h, "lost")  # placed afresh


# -- item 3: the poller owns node health ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["down", "garbage", "error"])
@pytest.mark.gen_test(timeout=60)
async def test_a_failed_call_asks_for_an_extra_poll_but_does_not_count_by_itself(db_url, mode):
    async with Harness(db_url, nodes=1) as h:
        node = h.fleet.nodes[0]
        await create_ok(h, "room")
        node.mode = mode
        polls_before = len(sent(node, "getMeetings"))
        await assert_node_unavailable(h, "getMeetingInfo", "meetingID=room")
        entry = entry_of(h, node)
        # the extra poll ran at once and is the only failure counted
        await wait_for(lambda: entry.failures == 1)
        if mode != "down":
            assert len(sent(node, "getMeetings")) == polls_before + 1
        for _ in range(3):  # more failing calls within the probe gap add nothing
            await assert_node_unavailable(h, "isMeetingRunning", "meetingID=room")
        await asyncio.sleep(0.2)
        assert entry.failures == 1 and not await node_in_error(h, node)
        await h.poll()  # the poller's second failure takes it out, for everyone
        assert await node_in_error(h, node)
        assert len(await meeting_rows(h, "room")) == 1  # an unanswered call keeps the record
        assert children(await create(h, "f3")) == NO_NODE


@pytest.mark.gen_test(timeout=60)
async def test_a_failed_create_with_no_node_left_answers_and_keeps_nothing(db_url):
    async with Harness(db_url, nodes=1) as h:
        node = h.fleet.nodes[0]
        node.mode = "error"
        await assert_node_unavailable(h, "create", "meetingID=f1&name=Room")
        assert await meeting_rows(h, "f1") == []
        assert entry_of(h, node).pending_meetings == 0
        assert not await node_in_error(h, node)


@pytest.mark.gen_test(timeout=60)
async def test_a_wait_for_a_connection_slot_is_not_a_node_failure(db_url):
    """With one connection towards nodes held by a long request, a call waits inside b3lb until its
    deadline: it fails locally, and neither counts against the node nor asks for an extra poll."""
    async with Harness(db_url, nodes=1, max_node_connections=1) as h:
        node = h.fleet.nodes[0]
        await create_ok(h, "room")
        node.call_modes, node.delay = {"getMeetingInfo": "slow"}, 3.0
        entry = entry_of(h, node)
        holder = asyncio.ensure_future(
            h.runtime.nodes.fetch(node.api_url("getMeetingInfo", "meetingID=room"), timeout=5.0)
        )
        await wait_for(lambda: any(r.call.endswith("getMeetingInfo") for r in node.requests))
        polls_before = len(sent(node, "getMeetings"))
        r = await h.call("isMeetingRunning", "meetingID=room")  # waits for the only slot, 2 s
        assert xml(r).findtext("returncode") == "FAILED" and b"no free connection" in r.body, r.body
        assert (await holder).code == 200
        await asyncio.sleep(0.3)
        assert len(sent(node, "getMeetings")) == polls_before  # no extra poll
        assert entry.failures == 0 and not await node_in_error(h, node)


@pytest.mark.gen_test(timeout=60)
async def test_a_poll_never_drops_a_meeting_while_its_create_is_under_way(db_url):
    """Review finding: a retried create of an uncertain meeting, still in flight during a poll."""
    async with Harness(db_url, nodes=1) as h:
        node = h.fleet.nodes[0]
        node.call_modes, node.delay = {"create": "stall"}, 2.5
        await assert_node_unavailable(h, "create", "meetingID=lost&name=Room")
        await asyncio.sleep(0.6)
        node.call_modes, node.delay = {"create": "slow"}, 1.0  # the retry takes a second, then creates
        retry = asyncio.ensure_future(h.call("create", "meetingID=lost&name=Room"))
        await asyncio.sleep(0.3)
        await h.poll()  # began after the first create gave up, while the retry is in flight
        assert xml(await retry).findtext("returncode") == "SUCCESS"
        assert "lost" in node.meetings and len(await meeting_rows(h, "lost")) == 1
        r = await h.call("join", "meetingID=lost&fullName=A&role=VIEWER")
        assert r.code == 302 and node.domain in r.headers["Location"]


@pytest.mark.gen_test(timeout=60)
async def test_a_create_that_lost_the_move_race_leaves_the_winners_row(db_url):
    """Review finding: create A's node answers 500 after a second; meanwhile create B
    restarts the room on the other node. A must not delete B's row."""
    async with Harness(db_url, nodes=2) as h:
        first, second = h.fleet.nodes
        entry_of(h, second).avoid_until = time.monotonic() + 1.0  # A lands on the first node
        first.call_modes, first.delay = {"create": "late-error"}, 1.0  # a 500 after a second
        a = asyncio.ensure_future(h.call("create", "meetingID=mm&name=Room"))
        await wait_for(lambda: any(r.call.endswith("create") for r in first.requests))
        entry_of(h, first).node.has_errors = True  # the poller takes the first node out meanwhile
        entry_of(h, first).recompute()
        await create_ok(h, "mm")  # B restarts the room on the second node
        await a
        assert "mm" in second.meetings
        (row,) = await meeting_rows(h, "mm")
        assert row["node_id"] == node_id(h, second)
        await h.reload()
        ref = h.runtime.meetings.get(h.tenants["ABC"].secrets[0][0], "mm")
        assert ref is not None and ref.node_id == node_id(h, second)
