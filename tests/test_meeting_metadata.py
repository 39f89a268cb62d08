"""b3lb's private metadata (the record set's nonce in `b3lb-recordset` and in b3lb's own
`endcallbackurl`) never reaches a tenant through getMeetingInfo or getMeetings, by any path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from api_helpers import q
from lxml import etree

from b3lb import bbbxml
from b3lb.api.calls import without_private_metadata
from b3lb.api.getmeetings import meeting_element
from b3lb.api.xml import ApiResult
from b3lb.meetings import MeetingTable
from b3lb.testing.harness import Harness

NONCE = b"1fbd46a5-09c2-4e6e-b49d-8a48b4149872"
PRIVATE = (
    b"<b3lb-recordset>" + NONCE + b"</b3lb-recordset>"
    b"<endcallbackurl>https://lb.example/b3lb/b/meeting/end?nonce=" + NONCE + b"</endcallbackurl>"
)


def meeting(meeting_id: str, metadata: bytes, customdata: bytes = b"") -> bytes:
    return (
        b"<meeting><meetingName>Weekly</meetingName><meetingID>" + meeting_id.encode() + b"</meetingID>"
        b"<participantCount>1</participantCount><attendees><attendee><userID>u</userID>"
        b"<customdata>" + customdata + b"</customdata></attendee></attendees>"
        b"<metadata><bbb-origin>Greenlight</bbb-origin>" + metadata + b"</metadata>"
        b"<isBreakout>false</isBreakout></meeting>"
    )


def document(*meetings: bytes) -> bytes:
    return b"<response><returncode>SUCCESS</returncode><meetings>" + b"".join(meetings) + b"</meetings></response>"


def metadata_of(element: bytes) -> dict[str, str]:
    root = etree.fromstring(element)
    meta = root.find("metadata")
    return {child.tag: child.text or "" for child in meta}


# The byte path of the poller -----------------------------------------------------------------------------------


def test_scanned_element_leaves_out_the_private_metadata_only():
    raw = meeting("room-1", b"<purpose>test</purpose>" + PRIVATE, customdata=b"<endcallbackurl>mine</endcallbackurl>")
    plain = meeting("room-2", b"<purpose>plain</purpose>")
    scanned = bbbxml.scan(document(raw, plain))
    assert scanned is not None
    xml = scanned[0].xml
    assert NONCE not in xml and metadata_of(xml) == {"bbb-origin": "Greenlight", "purpose": "test"}
    # an attendee's customdata is the tenant's own: kept
    assert etree.fromstring(xml).findtext("attendees/attendee/customdata/endcallbackurl") == "mine"
    assert xml == raw.replace(PRIVATE, b"")
    assert bbbxml.details(xml)[1] == "Greenlight"
    # the digest is the cut element's, made in place
    digest = scanned[0].digest()
    assert digest == bbbxml.element_digest(bytes(xml)) and digest != bbbxml.element_digest(raw)
    for other in (xml.replace(b"test", b"tset"), xml[:-1], xml + b" "):
        assert digest != bbbxml.element_digest(other)
    # an element without private metadata is still the node's own slice
    assert scanned[1].xml == plain and scanned[1].digest() == bbbxml.element_digest(plain)


@pytest.mark.parametrize(
    "metadata",
    [
        b"<b3lb-recordset>" + NONCE,  # left open: cut to the end of the metadata
        b"<b3lb-recordset>" + NONCE + b"<endcallbackurl>x" + NONCE + b"</endcallbackurl>",  # nested in an open one
        PRIVATE + b"<endcallbackurl>" + NONCE + b"</endcallbackurl>",  # repeated
        b"<endcallbackurl>"
        + NONCE
        + b"</endcallbackurl><purpose>a</purpose><b3lb-recordset>"
        + NONCE
        + b"</b3lb-recordset>",
    ],
)
def test_odd_private_elements_are_cut_too(metadata):
    scanned = bbbxml.scan(document(meeting("room-1", metadata)))
    assert scanned is not None
    assert NONCE not in scanned[0].xml and scanned[0].digest() == bbbxml.element_digest(bytes(scanned[0].xml))
    assert NONCE not in bbbxml.without_private(document(meeting("room-1", metadata)))


def test_private_spans_of_an_element_without_metadata():
    element = b"<meeting><meetingID>x</meetingID><b3lb-recordset>n</b3lb-recordset></meeting>"
    assert bbbxml.private_spans(element, 0, len(element)) == []
    assert bbbxml.without_private(element) is element


# getMeetingInfo ------------------------------------------------------------------------------------------------


def info(metadata: bytes, customdata: bytes = b"", declaration: bytes = b"") -> bytes:
    inner = meeting("room-1", metadata, customdata)[len(b"<meeting>") : -len(b"</meeting>")]
    return declaration + b"<response><returncode>SUCCESS</returncode>" + inner + b"</response>"


def test_meeting_info_keeps_the_nodes_bytes_when_nothing_is_private():
    for body in (
        info(b"<purpose>x</purpose>"),
        info(b"", customdata=b"<b3lb-recordset>mine</b3lb-recordset>"),
        b"<response><returncode>FAILED</returncode><messageKey>notFound</messageKey></response>",
    ):
        result = ApiResult(body, headers={"X-Node": "1"})
        assert without_private_metadata(result) is result


def test_meeting_info_loses_the_private_metadata_only():
    body = info(b"<purpose>x</purpose>" + PRIVATE, declaration=b'<?xml version="1.0" encoding="UTF-8"?>\n')
    result = without_private_metadata(ApiResult(body, status=200, headers={"X-Node": "1"}))
    assert NONCE not in result.body and result.headers == {"X-Node": "1"}
    assert result.body.startswith(b"<?xml")
    root = etree.fromstring(result.body)
    assert {c.tag: c.text for c in root.find("metadata")} == {"bbb-origin": "Greenlight", "purpose": "x"}
    assert [c.tag for c in root] == [c.tag for c in etree.fromstring(body)]
    assert not without_private_metadata(ApiResult(info(PRIVATE))).body.startswith(b"<?xml")


def test_meeting_info_that_is_no_xml_is_cut_anyway():
    body = info(PRIVATE)[:-20]  # truncated: lxml cannot read it
    assert NONCE not in without_private_metadata(ApiResult(body)).body


def test_meeting_info_entities_are_not_resolved():
    body = b'<!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + info(b"<purpose>&e;</purpose>" + PRIVATE)
    out = without_private_metadata(ApiResult(body)).body
    assert NONCE not in out and b"root:" not in out


def test_element_from_meeting_info_loses_the_private_metadata():
    element = meeting_element(info(b"<purpose>x</purpose>" + PRIVATE))
    assert element is not None and NONCE not in element
    assert metadata_of(element) == {"bbb-origin": "Greenlight", "purpose": "x"}


# Through b3lb, on a fake node ----------------------------------------------------------------------------------


@asynccontextmanager
async def recording(db_url: str) -> AsyncIterator[Harness]:
    async with Harness(db_url, nodes=1) as h:
        await h.pool.execute("UPDATE tenant SET record_by_default = true")
        await h.reload()
        yield h


async def answers(h: Harness, meeting_id: str) -> tuple[bytes, bytes]:
    got = (await h.call("getMeetingInfo", q(meetingID=meeting_id))).body, (await h.call("getMeetings", "")).body
    for body in got:
        assert b"<returncode>SUCCESS</returncode>" in body
    return got


def assert_hidden(body: bytes, nonce: str) -> None:
    assert nonce.encode() not in body and b"b3lb-recordset" not in body and b"endcallbackurl" not in body
    assert b"<purpose>weekly</purpose>" in body  # the tenant's own metadata stays


async def create(h: Harness, meeting_id: str) -> str:
    extra = q(
        meetingID=meeting_id,
        name="Sync",
        record="true",
        meta_purpose="weekly",
        meta_endCallbackUrl="https://frontend.example/ended",
    )
    assert b"SUCCESS" in (await h.call("create", extra)).body
    nonce = await h.pool.fetchval("SELECT id FROM record_set WHERE meeting_id = $1", meeting_id)
    assert nonce
    return nonce


@pytest.mark.parametrize("path", ["unpolled", "polled", "stored", "lxml"])
@pytest.mark.gen_test(timeout=60)
async def test_no_answer_shows_the_nonce(db_url, path):
    async with recording(db_url) as h:
        node = h.fleet.nodes[0]
        if path == "lxml":  # a getMeetings document bbbxml.scan refuses: the poller reads it with lxml
            plain: Callable[[], bytes] = node.meetings_document
            node.meetings_document = lambda: plain().replace(b"<meetings>", b"<meetings><!-- <![CDATA[ -->")
        nonce = await create(h, "room-1")
        assert nonce.encode() in node.meetings_document()  # the node does echo it
        if path != "unpolled":
            await h.poll()
            ref = h.runtime.meetings.get(h.tenants["ABC"].secrets[0][0], "room-1")
            assert ref.listed
            element = await h.pool.fetchval("SELECT xml FROM meeting WHERE meeting_id = 'room-1'")
            assert "<meetingID>room-1</meetingID>" in element and nonce not in element
        if path == "stored":  # answer with the elements stored in the rows, as another instance does
            h.runtime.polling = False
            h.runtime.meetings = h.runtime.meeting_sync.meetings = MeetingTable()  # as in another process
            h.runtime.meeting_sync.position = None  # read every row again
            await h.runtime.refresh_meetings()
            assert h.runtime.meetings.get(h.tenants["ABC"].secrets[0][0], "room-1").listed
        for body in await answers(h, "room-1"):
            assert_hidden(body, nonce)
        stored = await h.pool.fetchval("SELECT string_agg(xml, '') FROM meeting")
        assert nonce not in (stored or "")


@pytest.mark.gen_test(timeout=60)
async def test_unchanged_meeting_keeps_its_cut_copy_across_polls(db_url):
    async with recording(db_url) as h:
        nonce = await create(h, "room-1")
        await h.poll()
        ref = h.runtime.meetings.get(h.tenants["ABC"].secrets[0][0], "room-1")
        first, written = ref.polled, await changed_xid(h)
        await h.poll()
        assert ref.polled is first and await changed_xid(h) == written  # not written again
        h.fleet.nodes[0].add_attendees("room-1", 2)
        await h.poll()
        assert ref.polled is not first and await changed_xid(h) != written
        element = await h.pool.fetchval("SELECT xml FROM meeting WHERE meeting_id = 'room-1'")
        assert "<participantCount>2</participantCount>" in element and nonce not in element


async def changed_xid(h: Harness) -> str:
    return await h.pool.fetchval("SELECT changed_xid::text FROM meeting WHERE meeting_id = 'room-1'")
