import pytest
from lxml import etree

from b3lb.testing.harness import Harness


def xml(response):
    return etree.fromstring(response.body)


@pytest.mark.gen_test(timeout=30)
async def test_create_join_end_roundtrip(db_url):
    async with Harness(db_url, nodes=2) as h:
        r = await h.call("create", "name=Weekly+Sync&meetingID=room-42")
        assert r.code == 200, r.body
        doc = xml(r)
        assert doc.findtext("returncode") == "SUCCESS", r.body
        r = await h.call("join", "meetingID=room-42&fullName=Ann&role=VIEWER")
        assert r.code == 302
        # The browser follows the redirect to the node, which then counts the attendee.
        followed = await h.client.fetch(r.headers["Location"], follow_redirects=False, raise_error=False)
        assert followed.code == 302
        r = await h.call("isMeetingRunning", "meetingID=room-42")
        assert xml(r).findtext("returncode") == "SUCCESS"
        await h.poll()
        r = await h.call("getMeetings", "")
        assert xml(r).findtext("meetings/meeting/meetingID") == "room-42", r.body
        assert xml(r).findtext("meetings/meeting/participantCount") == "1", r.body
        r = await h.call("end", "meetingID=room-42")
        assert xml(r).findtext("messageKey") == "sentEndMeetingRequest", r.body
        # an end through the API counts the meeting's duration, as poll removals and callbacks do
        assert h.runtime.counters.pending[h.tenants["ABC"].secrets[0][0]].meeting_duration_count == 1
        r = await h.call("getMeetingInfo", "meetingID=room-42")
        assert xml(r).findtext("messageKey") == "notFound"
        r = await h.call("getMeetings", "")
        assert xml(r).findtext("messageKey") == "noMeetings", r.body
        r = await h.request("/b3lb/ping")
        assert r.body == b"OK!"
