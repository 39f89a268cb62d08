"""End-to-end `join` (spec 2.4, 5.4, 7.15, 7.16)."""

from __future__ import annotations

import json
from urllib.parse import quote, urlsplit

import pytest
from api_helpers import add_rule, children, create_ok, owner, q, url_pairs, xml
from tornado.httpclient import HTTPRequest

from b3lb.testing.fakebbb import checksum_is_valid
from b3lb.testing.harness import Harness

INVALID = [
    ("returncode", "FAILED"),
    ("messageKey", "invalidMeetingIdentifier"),
    ("message", "A meeting with that ID does not exist"),
]
ERRORS = [{"key": "invalidMeetingIdentifier", "message": "A meeting with that ID does not exist"}]


async def follow(h: Harness, location: str) -> tuple[int, bytes, str]:
    r = await h.client.fetch(HTTPRequest(location, follow_redirects=False), raise_error=False)
    return r.code, r.body, r.headers.get("Location", "")


@pytest.mark.gen_test(timeout=30)
async def test_join_redirects_to_the_owning_node_re_signed(db_url):
    async with Harness(db_url, nodes=3) as h:
        await create_ok(h, "room")
        node = owner(h, "room")
        query = q(fullName="Jürgen Müller", meetingID="room", role="VIEWER", userID="u*1")
        r = await h.call("join", query)
        assert r.code == 302 and r.body == b""
        location = r.headers["Location"]
        parts = urlsplit(location)
        assert (parts.hostname, parts.port, parts.path) == (node.domain, node.port, "/bigbluebutton/api/join")
        assert checksum_is_valid("join", parts.query, node.secret)
        assert not checksum_is_valid("join", parts.query, h.secret())
        assert [p for p in url_pairs(location) if p[0] != "checksum"] == [
            ("fullName", "Jürgen Müller"), ("meetingID", "room"), ("role", "VIEWER"), ("userID", "u*1")
        ]
        assert "checksum=" in location and h.secret() not in location
        # The LB never calls the node for a join; the client does.
        assert [req.call for req in node.requests] == ["create"]
        code, _, client_url = await follow(h, location)
        assert code == 302 and client_url.startswith(f"http://{node.domain}:{node.port}/html5client/join")
        assert [a.full_name for a in node.meetings["room"].attendees] == ["Jürgen Müller"]
        for method in ("POST", "HEAD"):
            r = await h.call("join", query, method=method)
            assert r.code == 405 and r.headers["Allow"] == "GET", method
        assert len(node.meetings["room"].attendees) == 1


@pytest.mark.gen_test(timeout=30)
async def test_join_redirect_false_is_forwarded_and_node_answers_xml(db_url):
    async with Harness(db_url, nodes=2) as h:
        await create_ok(h, "room")
        r = await h.call("join", "meetingID=room&fullName=Ann&role=MODERATOR&redirect=false")
        assert r.code == 302  # the LB always redirects (spec 2.4)
        assert ("redirect", "false") in url_pairs(r.headers["Location"])
        code, body, _ = await follow(h, r.headers["Location"])
        assert code == 200
        from lxml import etree

        doc = etree.fromstring(body)
        assert doc.findtext("returncode") == "SUCCESS" and doc.findtext("messageKey") == "successfullyJoined"


@pytest.mark.gen_test(timeout=30)
async def test_join_rules_and_css_injection(db_url):
    from b3lb.testing.harness import add_secret

    async with Harness(db_url, nodes=2) as h:
        await add_secret(h.pool, h.tenants["ABC"], 1)
        await h.pool.execute(
            "INSERT INTO asset (tenant_id, css, css_mime, css_data) VALUES ($1, 'style.css', 'text/css', $2)",
            h.tenants["ABC"].tenant_id, b"body{}",
        )
        await add_rule(h, "JOIN", "BLOCK", "webcamBackgroundURL")
        await add_rule(h, "JOIN", "SET", "userdata-bbb_auto_join_audio", "true")
        await add_rule(h, "JOIN", "OVERRIDE", "userdata-bbb_skip_check_audio", "true")
        await add_rule(h, "BOTH", "OVERRIDE", "logoutURL", "https://tenant.example/out")
        await add_rule(h, "CREATE", "OVERRIDE", "firstName", "never-on-join")
        await add_rule(h, "JOIN", "OVERRIDE", "userdata-bbb_skip_check_audio", "false", sub_id=1)
        await h.reload()
        await create_ok(h, "room")
        await create_ok(h, "room", sub_id=1)
        base = q(meetingID="room", fullName="Ann", role="VIEWER", webcamBackgroundURL="https://x.example/bg.png")
        r = await h.call("join", base + "&userdata-bbb_skip_check_audio=false&logoutURL=https%3A%2F%2Fc.example")
        params = dict(url_pairs(r.headers["Location"]))
        assert r.code == 302
        assert "webcamBackgroundURL" not in params
        assert params["userdata-bbb_auto_join_audio"] == "true"
        assert params["userdata-bbb_skip_check_audio"] == "true"
        assert params["logoutURL"] == "https://tenant.example/out"
        assert "firstName" not in params
        assert params["userdata-bbb_custom_style_url"] == "https://lb.test/b3lb/t/abc/css"
        # A client-given style URL is kept; the secret's rule replaces the tenant's.
        r = await h.call(
            "join", base + "&" + q(**{"userdata-bbb_custom_style_url": "https://c.example/x.css"}), sub_id=1
        )
        params = dict(url_pairs(r.headers["Location"]))
        assert params["userdata-bbb_custom_style_url"] == "https://c.example/x.css"
        assert params["userdata-bbb_skip_check_audio"] == "false"
        assert params["userdata-bbb_auto_join_audio"] == "true"


@pytest.mark.gen_test(timeout=30)
async def test_join_unknown_meeting(db_url):
    async with Harness(db_url, nodes=1) as h:
        r = await h.call("join", "fullName=Ann&role=VIEWER")
        assert r.code == 200 and children(r) == [
            ("returncode", "FAILED"),
            ("messageKey", "missingParamMeetingID"),
            ("message", "You must specify a meeting ID for the meeting."),
        ]
        r = await h.call("join", "meetingID=nope&fullName=Ann&redirect=false&errorRedirectUrl=https%3A%2F%2Fa.example")
        assert r.code == 200 and children(r) == INVALID
        r = await h.call("join", "meetingID=nope&fullName=Ann")
        assert r.code == 200 and children(r) == INVALID
        r = await h.call("join", "meetingID=nope&fullName=Ann&" + q(errorRedirectUrl="javascript:alert(1)"))
        assert r.code == 200 and children(r) == INVALID
        expected_errors = quote(json.dumps(ERRORS, separators=(",", ":")), safe="")
        cases = [
            (q(errorRedirectUrl="https://a.example/err", logoutURL="https://b.example/"), "https://a.example/err?"),
            (q(errorRedirectUrl="https://a.example/err?x=1"), "https://a.example/err?x=1&"),
            (q(logoutURL="http://b.example/out"), "http://b.example/out?"),
            (q(redirect="true", logoutURL="https://b.example/?a=b"), "https://b.example/?a=b&"),
        ]
        for extra, prefix in cases:
            r = await h.call("join", "meetingID=nope&fullName=Ann&" + extra)
            assert r.code == 302, extra
            assert r.headers["Location"] == f"{prefix}errors={expected_errors}"
            assert json.loads(dict(url_pairs(r.headers["Location"]))["errors"]) == ERRORS
        assert all(node.requests == [] for node in h.fleet.nodes)


@pytest.mark.gen_test(timeout=30)
async def test_join_unknown_meeting_legacy_400(db_url):
    async with Harness(db_url, nodes=1, legacy_400_on_unknown_join=True) as h:
        r = await h.call("join", "meetingID=nope&fullName=Ann&" + q(errorRedirectUrl="https://a.example/"))
        assert r.code == 400 and r.body == b""
        r = await h.call("join", "fullName=Ann")  # a missing ID is still the XML error
        assert xml(r).findtext("messageKey") == "missingParamMeetingID"


@pytest.mark.gen_test(timeout=30)
async def test_join_needs_no_database_for_a_known_meeting(db_url):
    async with Harness(db_url, nodes=2) as h:
        await create_ok(h, "room")
        node = owner(h, "room")
        await h.pool.execute("ALTER TABLE meeting RENAME TO meeting_x")
        try:
            for _ in range(3):
                r = await h.call("join", "meetingID=room&fullName=Ann&role=VIEWER")
                assert r.code == 302, r.body
                assert urlsplit(r.headers["Location"]).hostname == node.domain
        finally:
            await h.pool.execute("ALTER TABLE meeting_x RENAME TO meeting")


@pytest.mark.gen_test(timeout=30)
async def test_unknown_meeting_redirect_with_non_ascii_and_control_characters(db_url):
    """Issue 9.8: such a target once left the connection without an answer; now it is
    percent-encoded into the Location header (UTF-8), and the answer always comes."""
    async with Harness(db_url, nodes=1) as h:
        for target, expected in (
            ("https://a.example/€uro?x=€", "https://a.example/%E2%82%ACuro?x=%E2%82%AC&errors="),
            ("https://a.example/a\u2028b", "https://a.example/a%E2%80%A8b?errors="),
            ("https://a.example/x\r\nSet-Cookie: a=b", "https://a.example/x"),  # controls dropped or encoded
            ("https://a.example/ok%20already", "https://a.example/ok%20already?errors="),
        ):
            for name in ("errorRedirectUrl", "logoutURL"):
                r = await h.call("join", "meetingID=nope&fullName=Ann&" + q(**{name: target}))
                assert r.code == 302, (target, r.code, r.body)
                location = r.headers["Location"]
                assert location.startswith(expected), location
                assert location.isascii() and "\r" not in location and "\n" not in location
                assert "Set-Cookie" not in r.headers
        # the connection still works for the next request
        await create_ok(h, "room")
        assert (await h.call("join", "meetingID=room&fullName=Ann&role=VIEWER")).code == 302
