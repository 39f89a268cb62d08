"""getMeetings answers kept per secret set (b3lb/meeting_lists.py): bounds, staleness, and that an
answer served from the cache is the one a fresh build would give."""

from __future__ import annotations

import pytest
from api_helpers import create_ok, owner, sent, set_node, xml

from b3lb.meeting_lists import MAX_FETCHED, MeetingLists
from b3lb.testing.harness import Harness


def test_answers_are_kept_by_stamp_and_bounded_in_bytes() -> None:
    lists = MeetingLists(max_bytes=400)
    lists.keep((1,), (0, 1), b"a" * 90)
    assert lists.cached((1,), (0, 1)) == b"a" * 90
    assert lists.cached((1,), (0, 2)) is None  # a meeting of secret 1 changed
    assert lists.cached((1,), (1, 1)) is None  # a node went into or out of error
    assert lists.cached((2,), (0, 1)) is None
    lists.keep((2,), (0, 1), b"b" * 90)
    lists.keep((3,), (0, 1), b"c" * 90)
    assert lists.cached((1,), (0, 1)) is not None  # now the most recently used
    lists.keep((4,), (0, 1), b"d" * 90)
    lists.keep((5,), (0, 1), b"e" * 90)  # 450 bytes: the least recently used (2,) goes
    assert lists.cached((2,), (0, 1)) is None and lists.cached((1,), (0, 1)) is not None
    assert lists.size == sum(len(answer) for _, answer in lists.answers.values()) <= 400
    lists.keep((1,), (0, 2), b"f" * 101)  # more than a quarter of the bound: not kept, the old one dropped
    assert lists.cached((1,), (0, 2)) is None and lists.cached((1,), (0, 1)) is None
    assert lists.size == sum(len(answer) for _, answer in lists.answers.values())


def test_fetched_elements_are_bounded() -> None:
    lists = MeetingLists()
    for meeting_row_id in range(MAX_FETCHED + 5):
        lists.remember_fetched(meeting_row_id, b"<meeting/>")
    assert len(lists.fetched) == MAX_FETCHED and 0 not in lists.fetched and MAX_FETCHED + 4 in lists.fetched
    lists.forget_fetched([MAX_FETCHED + 4, -1])
    assert MAX_FETCHED + 4 not in lists.fetched


def counts(response) -> dict[str, str]:  # noqa: ANN001
    return {m.findtext("meetingID"): m.findtext("participantCount") for m in xml(response).iter("meeting")}


@pytest.mark.gen_test(timeout=30)
async def test_a_kept_answer_is_served_until_something_it_shows_changes(db_url: str) -> None:
    async with Harness(db_url, nodes=2, tenants=("ABC", "XYZ")) as h:
        lists = h.runtime.meeting_lists
        await create_ok(h, "room-1")
        await create_ok(h, "room-2")
        await create_ok(h, "other", slug="XYZ")
        await h.poll()
        first = await h.call("getMeetings")
        assert counts(first) == {"room-1": "0", "room-2": "0"}
        hits = lists.hits
        again = await h.call("getMeetings")
        assert again.body == first.body and lists.hits == hits + 1  # from memory
        # Another tenant's meeting changes: ABC's answer stays.
        owner(h, "other").add_attendees("other", 2)
        await h.poll()
        assert (await h.call("getMeetings")).body == first.body and lists.hits == hits + 2
        assert counts(await h.call("getMeetings", slug="XYZ")) == {"other": "2"}
        # One of ABC's meetings changes: built again, with the new count.
        owner(h, "room-1").add_attendees("room-1", 3)
        await h.poll()
        assert counts(await h.call("getMeetings")) == {"room-1": "3", "room-2": "0"}
        # A new meeting is listed at once; an ended one goes at once.
        await create_ok(h, "room-3")
        assert set(counts(await h.call("getMeetings"))) == {"room-1", "room-2", "room-3"}
        assert xml(await h.call("end", "meetingID=room-2")).findtext("returncode") == "SUCCESS"
        assert set(counts(await h.call("getMeetings"))) == {"room-1", "room-3"}
        # A node in error: its meetings drop out of the kept answer too.
        down = owner(h, "room-1")
        down.mode = "error"
        await set_node(h, down, has_errors=True)
        await h.reload()
        assert "room-1" not in counts(await h.call("getMeetings"))


@pytest.mark.gen_test(timeout=30)
async def test_elements_come_from_the_rows_not_from_memory(db_url: str) -> None:
    """What a row holds is what getMeetings shows: the process keeps no element of a polled meeting."""
    async with Harness(db_url, nodes=1) as h:
        await create_ok(h, "room-1")
        await h.poll()
        ref = h.runtime.meetings.get(h.tenants["ABC"].secrets[0][0], "room-1")
        assert ref.listed and not hasattr(ref, "xml") and h.runtime.meeting_lists.fetched == {}
        await h.pool.execute(
            "UPDATE meeting SET xml = replace(xml, '<meetingName>Room</meetingName>', "
            "'<meetingName>From the row</meetingName>') WHERE id = $1", ref.id)
        h.runtime.meetings.changed(ref.secret_id)  # as meeting_sync does for a changed row
        r = await h.call("getMeetings")
        assert xml(r).findtext("meetings/meeting/meetingName") == "From the row"


@pytest.mark.gen_test(timeout=30)
async def test_a_meeting_not_yet_polled_is_fetched_once_then_taken_from_its_row(db_url: str) -> None:
    async with Harness(db_url, nodes=1) as h:
        await create_ok(h, "fresh", "Fresh Room")
        ref = h.runtime.meetings.get(h.tenants["ABC"].secrets[0][0], "fresh")
        r = await h.call("getMeetings")
        assert xml(r).findtext("meetings/meeting/meetingName") == "Fresh Room"
        assert ref.id in h.runtime.meeting_lists.fetched
        infos = len(sent(h.fleet.nodes[0], "getMeetingInfo"))
        assert (await h.call("getMeetings")).body == r.body  # complete now: kept, no second fetch
        assert len(sent(h.fleet.nodes[0], "getMeetingInfo")) == infos
        await h.poll()
        r = await h.call("getMeetings")
        assert xml(r).findtext("meetings/meeting/meetingName") == "Fresh Room"
        assert ref.id not in h.runtime.meeting_lists.fetched  # the row has the node's own now
