"""Pass-through calls, getMeetings, and nodes that fail (spec 2.0, 2.1, 2.5-2.10, 4.12, 7.14, 7.17, 7.18)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from api_helpers import (
    MISSING_ID,
    NO_MEETINGS,
    NOT_FOUND,
    NOT_RUNNING,
    all_sent,
    children,
    create_ok,
    hosting,
    meeting_rows,
    node_id,
    owner,
    pairs,
    q,
    sent,
    set_node,
    xml,
)
from lxml import etree
from tornado.httpclient import HTTPRequest

from b3lb.api.calls import without_private_metadata
from b3lb.api.xml import ApiResult
from b3lb.testing.fakebbb import FakeMeeting, checksum_is_valid
from b3lb.testing.harness import Harness, add_secret

DOCUMENT = (
    b'<modules><module name="presentation">'
    b'<document url="https://f.example/a.pdf" filename="a.pdf"/></module></modules>'
)


async def direct(h: Harness, url: str) -> tuple[int, bytes, str]:
    r = await h.client.fetch(HTTPRequest(url), raise_error=False)
    return r.code, r.body, r.headers.get("Content-Type", "")


def listed(response) -> list[str]:  # noqa: ANN001
    return sorted(m.findtext("meetingID") for m in xml(response).iter("meeting"))


@pytest.mark.gen_test(timeout=30)
async def test_pass_through_calls_answer_as_the_node(db_url):
    async with Harness(db_url, nodes=3) as h:
        await create_ok(h, "room", extra="moderatorPW=mp")
        node = owner(h, "room")
        r = await h.call("getMeetingInfo", "meetingID=room")
        code, body, content_type = await direct(h, node.api_url("getMeetingInfo", "meetingID=room"))
        # the node's answer but for b3lb's own metadata (its end callback carries the meeting's nonce)
        expected = without_private_metadata(ApiResult(body)).body
        assert (r.code, r.body, r.headers["Content-Type"]) == (code, expected, content_type)
        assert b"<endcallbackurl>" in body and b"endcallbackurl" not in r.body
        assert xml(r).findtext("meetingID") == "room"
        r = await h.call("isMeetingRunning", "meetingID=room")
        assert children(r) == [("returncode", "SUCCESS"), ("running", "false")]  # created, nobody joined
        node.add_attendees("room", 1)
        assert xml(await h.call("isMeetingRunning", "meetingID=room", method="POST")).findtext("running") == "true"
        r = await h.call("sendChatMessage", q(meetingID="room", message="héllo <b> & co", userName="Bot"))
        assert xml(r).findtext("returncode") == "SUCCESS"
        assert node.meetings["room"].chat_messages == [("Bot", "héllo <b> & co")]
        # A POST from the client reaches the node as GET, the only method BBB 3.0 takes here.
        r = await h.call("sendChatMessage", q(meetingID="room", message="again"), method="POST")
        assert xml(r).findtext("returncode") == "SUCCESS", r.body
        assert [m.method for m in sent(node, "sendChatMessage")] == ["GET", "GET"]
        r = await h.call("insertDocument", "meetingID=room", method="POST", body=DOCUMENT,
                         content_type="application/xml")
        assert xml(r).findtext("returncode") == "SUCCESS", r.body
        (request,) = sent(node, "insertDocument")
        assert (request.method, request.body, request.content_type) == ("POST", DOCUMENT, "application/xml")
        assert node.meetings["room"].inserted_documents == [DOCUMENT]
        r = await h.call("insertDocument", "meetingID=room")
        assert r.code == 405 and r.headers["Allow"] == "POST"
        # setConfigXML is passed through although BBB removed it: the node's answer comes back.
        r = await h.call("setConfigXML", "meetingID=room&configXML=x")
        (request,) = sent(node, "setConfigXML")
        assert checksum_is_valid("setConfigXML", request.query, node.secret)
        assert r.code == 404
        # Every request went to the owning node only, signed with its secret.
        for other in h.fleet.nodes:
            if other is not node:
                assert other.requests == []
        for request in node.requests:
            assert checksum_is_valid(request.call, request.query, node.secret), request.call
        # end, then the meeting is gone at once.
        r = await h.call("end", "meetingID=room&password=wrong")
        assert xml(r).findtext("messageKey") == "invalidPassword"
        assert len(await meeting_rows(h, "room")) == 1
        r = await h.call("end", "meetingID=room&password=mp", method="POST")
        assert children(r)[:2] == [("returncode", "SUCCESS"), ("messageKey", "sentEndMeetingRequest")]
        assert await meeting_rows(h, "room") == []
        assert children(await h.call("getMeetingInfo", "meetingID=room")) == NOT_FOUND


@pytest.mark.gen_test(timeout=30)
async def test_unknown_and_missing_meeting_answers(db_url):
    async with Harness(db_url, nodes=1) as h:
        for call in ("getMeetingInfo", "end", "sendChatMessage", "setConfigXML", "insertDocument"):
            method = "POST" if call == "insertDocument" else "GET"
            body = DOCUMENT if method == "POST" else None
            ctype = "application/xml" if body else None
            r = await h.call(call, "meetingID=nope", method=method, body=body, content_type=ctype)
            assert r.code == 200 and children(r) == NOT_FOUND, call
            r = await h.call(call, "", method=method, body=body, content_type=ctype)
            assert r.code == 200 and children(r) == MISSING_ID, call
        assert children(await h.call("isMeetingRunning", "meetingID=nope")) == NOT_RUNNING
        assert children(await h.call("isMeetingRunning", "")) == NOT_RUNNING
        assert h.fleet.nodes[0].requests == []


@pytest.mark.gen_test(timeout=30)
async def test_create_right_after_end_is_placed_afresh(db_url):
    async with Harness(db_url, nodes=2) as h:
        original = "https://gl.example/ended"
        await create_ok(h, "again", extra=q(meta_endCallbackUrl=original))
        (before,) = await meeting_rows(h, "again")
        await h.poll()
        assert listed(await h.call("getMeetings")) == ["again"]
        assert xml(await h.call("end", "meetingID=again")).findtext("returncode") == "SUCCESS"
        assert children(await h.call("getMeetings")) == NO_MEETINGS  # no poll needed
        ended = await h.pool.fetchrow("SELECT * FROM meeting_ended WHERE nonce = $1", before["nonce"])
        assert ended is not None and ended["end_callback_url"] == original and ended["meeting_id"] == "again"
        doc = await create_ok(h, "again")
        assert doc.findtext("messageKey") in (None, "")  # a new meeting, not a duplicate
        (after,) = await meeting_rows(h, "again")
        assert after["nonce"] != before["nonce"] and after["id"] != before["id"]
        await h.poll()
        assert listed(await h.call("getMeetings")) == ["again"]


@pytest.mark.gen_test(timeout=30)
async def test_meetings_of_a_node_in_error_are_unknown_and_create_moves_them(db_url):
    async with Harness(db_url, nodes=2) as h:
        await create_ok(h, "room")
        await create_ok(h, "other")
        old = owner(h, "room")
        (before,) = await meeting_rows(h, "room")
        old.mode = "error"  # a poll must not bring it back either
        await set_node(h, old, has_errors=True)
        assert children(await h.call("getMeetingInfo", "meetingID=room")) == NOT_FOUND
        assert children(await h.call("end", "meetingID=room")) == NOT_FOUND
        assert children(await h.call("isMeetingRunning", "meetingID=room")) == NOT_RUNNING
        await h.poll()
        assert "room" not in listed(await h.call("getMeetings"))
        # Restart the room: it moves to a healthy node with a fresh nonce.
        await create_ok(h, "room")
        (after,) = await meeting_rows(h, "room")
        new = next(n for n in h.fleet.nodes if n is not old)
        assert after["id"] == before["id"] and after["nonce"] != before["nonce"]
        assert after["node_id"] == node_id(h, new) and "room" in new.meetings
        (request,) = [r for r in sent(new, "create") if ("meetingID", "room") in pairs(r)]
        assert (
            dict(pairs(request))["meta_endCallbackUrl"] == f"https://lb.test/b3lb/b/meeting/end?nonce={after['nonce']}"
        )
        r = await h.call("join", "meetingID=room&fullName=A&role=VIEWER")
        assert r.code == 302 and new.domain in r.headers["Location"]
        await h.reload()  # the moved meeting survives a reload of the routing table
        r = await h.call("join", "meetingID=room&fullName=A&role=VIEWER")
        assert r.code == 302 and new.domain in r.headers["Location"]


# -- getMeetings ---------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_get_meetings_scopes_by_secret_and_tenant(db_url):
    async with Harness(db_url, nodes=2, tenants=("ABC", "XYZ")) as h:
        await add_secret(h.pool, h.tenants["ABC"], 1)
        await h.reload()
        assert children(await h.call("getMeetings")) == NO_MEETINGS
        await create_ok(h, "main-room")
        await create_ok(h, "sub-room", sub_id=1)
        await create_ok(h, "xyz-room", slug="XYZ")
        # Meetings the LB did not create, and breakout rooms, are never listed.
        stray = h.fleet.nodes[0].add_meeting(FakeMeeting(meeting_id="stray", name="Stray"))
        h.fleet.nodes[1].add_meeting(FakeMeeting(meeting_id="main-room-bo", name="BO", is_breakout=True))
        assert stray.meeting_id == "stray"
        owner(h, "sub-room").add_attendees("sub-room", 2)
        await h.poll()
        r = await h.call("getMeetings")
        assert r.code == 200 and xml(r).findtext("returncode") == "SUCCESS"
        assert listed(r) == ["main-room", "sub-room"]
        assert listed(await h.call("getMeetings", method="POST")) == ["main-room", "sub-room"]
        r = await h.call("getMeetings", sub_id=1)
        assert listed(r) == ["sub-room"]
        meeting = xml(r).find("meetings/meeting")
        assert meeting.findtext("participantCount") == "2"
        assert [a.findtext("fullName") for a in meeting.iterfind("attendees/attendee")] == ["Attendee 1", "Attendee 2"]
        assert listed(await h.call("getMeetings", slug="XYZ")) == ["xyz-room"]
        # A node in error contributes nothing.
        owner(h, "main-room").mode = "error"
        await set_node(h, owner(h, "main-room"), has_errors=True)
        await h.poll()
        assert "main-room" not in listed(await h.call("getMeetings"))


def shape(element) -> list[str]:  # noqa: ANN001
    return [child.tag for child in element]


@pytest.mark.parametrize("polling", [True, False])
@pytest.mark.gen_test(timeout=30)
async def test_get_meetings_lists_a_new_meeting_at_once(db_url, polling):
    """Issue 9.15: like BBB, a meeting is listed right after its create, before any poll, with
    the same element shape as a polled one; on the polling instance and on the others."""
    async with Harness(db_url, nodes=2) as h:
        await create_ok(h, "early", extra=q(meta_purpose="test"))
        await h.poll()
        h.runtime.polling = polling  # False: served from the stored per-secret list plus fresh ones
        await create_ok(h, "fresh", "Fresh Room")
        r = await h.call("getMeetings")
        assert listed(r) == ["early", "fresh"]
        fresh = next(m for m in xml(r).iterfind("meetings/meeting") if m.findtext("meetingID") == "fresh")
        assert fresh.findtext("meetingName") == "Fresh Room"
        h.runtime.polling = True
        await h.poll()
        r = await h.call("getMeetings")
        assert listed(r) == ["early", "fresh"]
        polled = next(m for m in xml(r).iterfind("meetings/meeting") if m.findtext("meetingID") == "fresh")
        assert shape(fresh) == shape(polled)
        assert etree.tostring(fresh.find("metadata")) == etree.tostring(polled.find("metadata"))


@pytest.mark.gen_test(timeout=30)
async def test_get_meetings_escapes_names(db_url):
    async with Harness(db_url, nodes=1) as h:
        name = 'R&D <Team> "Ü" 🎉'
        meeting_id = "id&<ü>"
        await create_ok(h, meeting_id, name=name)
        await h.poll()
        r = await h.call("getMeetings")
        assert r.headers["Content-Type"].lower().startswith("text/xml")
        meeting = xml(r).find("meetings/meeting")
        assert meeting.findtext("meetingName") == name and meeting.findtext("meetingID") == meeting_id
        assert b"R&amp;D &lt;Team&gt;" in r.body and "🎉".encode() in r.body
        info = await h.call("getMeetingInfo", "meetingID=" + quote(meeting_id, safe=""))
        assert xml(info).findtext("meetingName") == name
        assert len(all_sent(h, "create")) == 1 and len(hosting(h, meeting_id)) == 1
