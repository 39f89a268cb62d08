"""The byte scanner for getMeetings documents agrees with lxml, and steps aside when unsure."""

from __future__ import annotations

import pytest
from lxml import etree

from b3lb import bbbxml
from b3lb.testing.fakebbb import FakeFleet, FakeMeeting
from b3lb.testing.fakebbb_xml import FakeAttendee


def lxml_view(body: bytes) -> list[tuple[str, bool, int]]:
    root = etree.fromstring(body)
    return [
        (m.findtext("meetingID"), m.findtext("isBreakout") == "true", int(m.findtext("participantCount")))
        for m in root.iterfind("meetings/meeting")
    ]


def document(*meetings: FakeMeeting) -> bytes:
    node = FakeFleet(1).nodes[0]  # never started: only its document is used
    for meeting in meetings:
        node.add_meeting(meeting)
    return node.meetings_document()


def test_scan_matches_lxml_on_tricky_meetings():
    plain = FakeMeeting(meeting_id="room-1", name="Weekly Sync", metadata={"bbb-origin": "greenlight"})
    tricky = FakeMeeting(meeting_id='a&b <"c">', name="Jürgen & <Co>",
                         metadata={"bbb-origin-server-name": "gl.example.org", "bbb-origin": "Green & light"})
    # an attendee whose customdata uses the names of meeting-level fields
    tricky.attendees.append(FakeAttendee("u1", "Eve", custom_data={"isBreakout": "true", "metadata": "x"}))
    breakout = FakeMeeting(meeting_id="room-1-breakout", name="Breakout", is_breakout=True)
    breakout.attendees.append(FakeAttendee("u2", "Bob"))
    body = document(plain, tricky, breakout)
    scanned = bbbxml.scan(body)
    assert scanned is not None
    assert [(m.meeting_id, m.is_breakout, m.participants) for m in scanned] == lxml_view(body)
    assert [m.meeting_id for m in scanned] == ["room-1", 'a&b <"c">', "room-1-breakout"]
    # each slice is the node's element byte for byte, and parses on its own
    for meeting in scanned:
        assert meeting.xml in body and etree.fromstring(meeting.xml).tag == "meeting"
    counts, origin, server = bbbxml.details(scanned[1].xml)
    assert counts[0] == 1 and (origin, server) == ("Green & light", "gl.example.org")
    # digested in place: the digest of the element's bytes, different for any other element
    digest = scanned[0].digest()
    assert digest == bbbxml.element_digest(bytes(scanned[0].xml)) and len(digest) == bbbxml.DIGEST_SIZE
    assert digest != scanned[1].digest() and digest != bbbxml.element_digest(scanned[0].xml[:-1])
    assert digest != bbbxml.element_digest(scanned[0].xml.replace(b"Weekly", b"Weakly"))


def test_empty_and_non_success_documents():
    empty = document()
    assert bbbxml.scan(empty) == []
    for body in (b"<response><returncode>FAILED</returncode><messageKey>checksumError</messageKey></response>",
                 b"\x00<<garbage>>", b"", b"<response><returncode>SUCCESS</returncode><meetings>"):
        with pytest.raises(ValueError):
            bbbxml.scan(body)


@pytest.mark.parametrize(
    "body",
    [
        b"<response><returncode>SUCCESS</returncode><meetings><meeting><meetingID><![CDATA[x]]></meetingID>"
        b"</meeting></meetings></response>",
        b'<response><returncode>SUCCESS</returncode><meetings><meeting id="1"><meetingID>x</meetingID>'
        b"</meeting></meetings></response>",
        b"<response><returncode>SUCCESS</returncode><meetings><meeting><name>x</name></meeting></meetings></response>",
        b"<response><returncode>SUCCESS</returncode><meetings><meeting><meeting></meeting></meeting>"
        b"</meetings></response>",
    ],
)
def test_unfamiliar_shapes_fall_back_to_lxml(body):
    assert bbbxml.scan(body) is None
