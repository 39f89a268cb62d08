"""Tests of the fake BBB fleet (b3lb.testing.fakebbb) over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from lxml import etree
from tornado.httpclient import (
    AsyncHTTPClient,
    HTTPClientError,
    HTTPRequest,
    HTTPResponse,
)
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from b3lb.testing.fakebbb import (
    FakeFleet,
    FakeNode,
    checksum_is_valid,
    node_domain,
    parse_query,
    sign_query,
)

S1 = "b3lbDemoSecret0123456789abcdefghijklmnopQR"  # spec 1.10 example secret
FleetTest = Callable[[FakeFleet], Awaitable[None]]


def run_with_fleet(test: FleetTest, count: int = 1, secret: str | None = None) -> None:
    async def main() -> None:
        async with FakeFleet(count, secret=secret) as fleet:
            await test(fleet)

    asyncio.run(main())


async def fetch(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> HTTPResponse:
    client = AsyncHTTPClient(force_instance=True)
    try:
        request = HTTPRequest(url, method=method, body=body, headers=headers, follow_redirects=False)
        return await client.fetch(request, raise_error=False)
    finally:
        client.close()


async def call(node: FakeNode, api_call: str, query: str = "", algorithm: str = "sha256") -> etree._Element:
    """Signed GET of an API call; returns the parsed <response>."""
    response = await fetch(node.api_url(api_call, query, algorithm))
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/xml")
    return etree.fromstring(response.body)


def with_checksum_at(position: str, api_call: str, query: str, secret: str) -> str:
    checksum = hashlib.sha1((api_call + query + secret).encode()).hexdigest()
    first, rest = query.split("&", 1)
    if position == "start":
        return f"checksum={checksum}&{query}"
    if position == "middle":
        return f"{first}&checksum={checksum}&{rest}"
    return f"{query}&checksum={checksum}"


def quoted(text: str) -> str:
    return quote(text, safe="")


# --- checksum rules (pure functions) -------------------------------------------------


@pytest.mark.parametrize(
    "checksum",
    [
        "e1c03727f738c50dcdf2fa1029137cb3945d6592",
        "2bdbdf172d9118b90cffe9366c595161f7b7bff0d9c0f121b3d9e2a6bebba30e",
        "e1b9f7485199a9920db34dbf69e64745098ce7ef5ea88306d9107349644c8983c8b34fcb822f72253350b2051a3a0dfd",
        (
            "6cbc494cb38f4818727cad24c1394c615aac3c796d88413254edc6730151022385dd36a5e3050289660d540ef3af8bd2"
            "7682ecdc65bb1c07b1f75ff84bbdb501"
        ),
    ],
)
def test_spec_example_a_vectors_verify_for_all_algorithms(checksum: str) -> None:
    query = (
        "name=Weekly+Sync&meetingID=room-42&record=true"
        "&meta_endCallbackUrl=https%3A%2F%2Fgl.example.org%2Fended%3Froom%3D42"
    )
    assert checksum_is_valid("create", f"{query}&checksum={checksum}", S1)
    assert not checksum_is_valid("create", f"{query}&checksum={checksum}", S1 + "x")


def test_bbb_documentation_vector() -> None:
    query = "name=Test+Meeting&meetingID=abc123&attendeePW=111222&moderatorPW=333444"
    secret = "639259d4-9dd8-4b25-bf01-95f9567eaf4b"
    assert checksum_is_valid("create", f"{query}&checksum=1fcbb0c4fc1f039f73aa6d697d2db9ba7f803f17", secret)


def test_plus_and_percent20_are_different_strings() -> None:
    plus = "meetingID=room-42&fullName=J%C3%BCrgen+M%C3%BCller&role=MODERATOR"
    percent = "meetingID=room-42&fullName=J%C3%BCrgen%20M%C3%BCller&role=MODERATOR"
    assert checksum_is_valid("join", plus + "&checksum=a57d228f6462c8cb32e40b6594dbdd632289f978", S1)
    assert checksum_is_valid("join", percent + "&checksum=fdc64595007665031b34541836454453457cae19", S1)
    assert not checksum_is_valid("join", percent + "&checksum=a57d228f6462c8cb32e40b6594dbdd632289f978", S1)


def test_parse_query_first_value_wins_and_strips_control_characters() -> None:
    params = parse_query("meetingID=a&meetingID=b&name=J%C3%BCrgen+M%0A%C3%BCller&empty=")
    assert params == {"meetingID": "a", "name": "Jürgen Müller", "empty": ""}


# --- checksum over HTTP --------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha384", "sha512"])
def test_each_algorithm_is_accepted(algorithm: str) -> None:
    async def test(fleet: FakeFleet) -> None:
        document = await call(fleet.nodes[0], "isMeetingRunning", "meetingID=room-42", algorithm)
        assert document.findtext("returncode") == "SUCCESS"
        assert document.findtext("running") == "false"

    run_with_fleet(test)


def test_checksum_position_upper_case_and_documentation_vector_over_http() -> None:
    secret = "639259d4-9dd8-4b25-bf01-95f9567eaf4b"

    async def test(fleet: FakeFleet) -> None:
        node = fleet.nodes[0]
        query = "meetingID=room-42&redirect=false&fullName=Ann"
        for position in ("start", "middle", "end"):
            signed = with_checksum_at(position, "isMeetingRunning", query, secret)
            document = etree.fromstring((await fetch(node.api_base + "isMeetingRunning?" + signed)).body)
            assert document.findtext("returncode") == "SUCCESS", position
        upper = sign_query("getMeetings", "", secret, "sha1").upper().replace("CHECKSUM=", "checksum=")
        document = etree.fromstring((await fetch(node.api_base + "getMeetings?" + upper)).body)
        assert document.findtext("messageKey") == "noMeetings"
        vector = "name=Test+Meeting&meetingID=abc123&attendeePW=111222&moderatorPW=333444"
        url = node.api_base + "create?" + vector + "&checksum=1fcbb0c4fc1f039f73aa6d697d2db9ba7f803f17"
        document = etree.fromstring((await fetch(url)).body)
        assert document.findtext("returncode") == "SUCCESS"
        assert document.findtext("meetingID") == "abc123"
        assert node.meetings["abc123"].name == "Test Meeting"

    run_with_fleet(test, secret=secret)


@pytest.mark.parametrize(
    "checksum_part",
    ["", "&checksum=", "&checksum=" + "0" * 40, "&checksum=" + "a" * 39, "&checksum=" + "é" * 40],
    ids=["missing", "empty", "wrong", "39-chars", "non-ascii"],
)
def test_bad_checksum_is_rejected_with_checksum_error(checksum_part: str) -> None:
    async def test(fleet: FakeFleet) -> None:
        node = fleet.nodes[0]
        response = await fetch(node.api_base + "getMeetingInfo?meetingID=x" + checksum_part)
        document = etree.fromstring(response.body)
        assert response.code == 200
        assert document.findtext("returncode") == "FAILED"
        assert document.findtext("messageKey") == "checksumError"
        assert document.findtext("message") == "You did not pass the checksum security check"

    run_with_fleet(test)


def test_api_root_answers_version_without_checksum() -> None:
    async def test(fleet: FakeFleet) -> None:
        for url in (fleet.nodes[0].api_base, fleet.nodes[0].api_base.rstrip("/")):
            document = etree.fromstring((await fetch(url)).body)
            assert document.findtext("returncode") == "SUCCESS"
            assert document.findtext("version") == "2.0"
        assert fleet.nodes[0].requests[0].call == ""

    run_with_fleet(test)


# --- API calls -----------------------------------------------------------------------


def test_create_duplicate_and_id_not_unique() -> None:
    async def test(fleet: FakeFleet) -> None:
        node = fleet.nodes[0]
        first = await call(node, "create", "name=Room&meetingID=room-1&attendeePW=ap&moderatorPW=mp")
        assert first.findtext("returncode") == "SUCCESS"
        assert first.findtext("messageKey") == ""
        internal_id = first.findtext("internalMeetingID")
        create_time = first.findtext("createTime")
        assert internal_id == hashlib.sha1(b"room-1").hexdigest() + "-" + create_time
        for query in ("name=Room&meetingID=room-1", "name=Room&meetingID=room-1&attendeePW=ap&moderatorPW=mp"):
            again = await call(node, "create", query)
            assert again.findtext("messageKey") == "duplicateWarning"
            assert again.findtext("internalMeetingID") == internal_id
            assert again.findtext("createTime") == create_time
        clash = await call(node, "create", "name=Room&meetingID=room-1&attendeePW=other&moderatorPW=mp")
        assert clash.findtext("returncode") == "FAILED"
        assert clash.findtext("messageKey") == "idNotUnique"
        comma = await call(node, "create", "name=Room&meetingID=a%2Cb")
        assert comma.findtext("messageKey") == "validationError"
        assert list(node.meetings) == ["room-1"]

    run_with_fleet(test)


def test_create_post_checks_content_type_and_records_body() -> None:
    async def test(fleet: FakeFleet) -> None:
        node = fleet.nodes[0]
        body = b'<modules><module name="presentation"><document url="https://x/a.pdf"/></module></modules>'
        url = node.api_url("create", "name=Room&meetingID=posted")
        bad = await fetch(url, "POST", body, {"Content-Type": "text/plain"})
        assert etree.fromstring(bad.body).findtext("messageKey") == "unsupportedContentType"
        assert "posted" not in node.meetings
        good = await fetch(url, "POST", body, {"Content-Type": "application/xml; charset=utf-8"})
        assert etree.fromstring(good.body).findtext("returncode") == "SUCCESS"
        recorded = node.requests[-1]
        assert (recorded.method, recorded.call, recorded.body) == ("POST", "create", body)
        assert recorded.content_type.startswith("application/xml")
        assert recorded.query == url.split("?", 1)[1]

    run_with_fleet(test)


def test_join_redirect_xml_and_unknown_meeting() -> None:
    async def test(fleet: FakeFleet) -> None:
        node = fleet.nodes[0]
        await call(node, "create", "name=Room&meetingID=room-2")
        response = await fetch(node.api_url("join", "meetingID=room-2&fullName=Ann&role=moderator&userID=u-1"))
        assert response.code == 302
        location = response.headers["Location"]
        assert location.startswith(f"http://{node.domain}:{node.port}/html5client/join?sessionToken=")
        followed = await fetch(location)
        assert followed.code == 200
        xml_join = await call(node, "join", "meetingID=room-2&fullName=Bob&redirect=false")
        assert xml_join.findtext("messageKey") == "successfullyJoined"
        assert xml_join.findtext("meeting_id") == node.meetings["room-2"].internal_meeting_id
        assert xml_join.findtext("url").startswith(f"http://{node.domain}:{node.port}/html5client/join")
        attendees = node.meetings["room-2"].attendees
        assert [(a.full_name, a.role) for a in attendees] == [("Ann", "MODERATOR"), ("Bob", "VIEWER")]
        assert attendees[0].user_id == "u-1"
        unknown = await call(node, "join", "meetingID=nope&fullName=Eve")
        assert unknown.findtext("returncode") == "FAILED"
        assert unknown.findtext("messageKey") == "invalidMeetingIdentifier"
        post = await fetch(node.api_url("join", "meetingID=room-2&fullName=Eve"), "POST", b"")
        assert post.code == 405

    run_with_fleet(test)


def test_end_is_meeting_running_and_not_found() -> None:
    async def test(fleet: FakeFleet) -> None:
        node = fleet.nodes[0]
        await call(node, "create", "name=Room&meetingID=room-3")
        assert (await call(node, "isMeetingRunning", "meetingID=room-3")).findtext("running") == "false"
        node.add_attendees("room-3", 2)
        assert (await call(node, "isMeetingRunning", "meetingID=room-3")).findtext("running") == "true"
        ended = await call(node, "end", "meetingID=room-3")
        assert ended.findtext("messageKey") == "sentEndMeetingRequest"
        assert "room-3" not in node.meetings
        assert (await call(node, "isMeetingRunning", "meetingID=room-3")).findtext("running") == "false"
        for api_call in ("getMeetingInfo", "end", "sendChatMessage"):
            missing = await call(node, api_call, "meetingID=room-3&message=hi")
            assert missing.findtext("messageKey") == "notFound"
            assert missing.findtext("message") == "A meeting with that ID does not exist"

    run_with_fleet(test)


def test_get_meeting_info_round_trips_non_ascii_and_xml_special_characters() -> None:
    name = 'Müller <&"> Café 会议'
    origin = 'Grüße & <tags> "quoted"'

    async def test(fleet: FakeFleet) -> None:
        node = fleet.nodes[0]
        query = (
            f"name={quoted(name)}&meetingID={quoted('raum-ü&1')}&meta_bbb-Origin={quoted(origin)}"
            "&meta_endCallbackUrl=http%3A%2F%2F127.0.0.1%3A9%2Fend"
        )
        await call(node, "create", query)
        await call(
            node, "join", f"meetingID={quoted('raum-ü&1')}&fullName={quoted(name)}&userdata-bbb_x=1&redirect=false"
        )
        info = await call(node, "getMeetingInfo", f"meetingID={quoted('raum-ü&1')}")
        assert info.findtext("returncode") == "SUCCESS"
        assert info.findtext("meetingName") == name
        assert info.findtext("meetingID") == "raum-ü&1"
        assert info.findtext("metadata/bbb-origin") == origin
        assert info.findtext("metadata/endcallbackurl") == "http://127.0.0.1:9/end"
        assert info.findtext("attendees/attendee/fullName") == name
        assert info.findtext("attendees/attendee/customdata/bbb_x") == "1"
        assert (info.findtext("running"), info.findtext("participantCount")) == ("true", "1")
        assert [child.tag for child in info][:5] == [
            "returncode",
            "meetingName",
            "meetingID",
            "internalMeetingID",
            "createTime",
        ]
        assert [child.tag for child in info][-3:] == ["attendees", "metadata", "isBreakout"]

    run_with_fleet(test)


def test_get_meetings_empty_and_non_empty_with_cache_refresh() -> None:
    async def test(fleet: FakeFleet) -> None:
        node = fleet.nodes[0]
        empty = await fetch(node.api_url("getMeetings"))
        assert empty.body == (
            b"<response>\n<returncode>SUCCESS</returncode>\n<meetings/>\n<messageKey>noMeetings</messageKey>\n"
            b"<message>no meetings were found on this server</message>\n</response>"
        )
        node.populate(3, 2)
        listed = await call(node, "getMeetings")
        assert len(listed.findall("meetings/meeting")) == 3
        assert {m.findtext("participantCount") for m in listed.iterfind("meetings/meeting")} == {"2"}
        first_id = listed.findtext("meetings/meeting/meetingID")
        node.add_attendees(first_id, 1, role="MODERATOR")
        refreshed = await call(node, "getMeetings")
        meeting = next(m for m in refreshed.iterfind("meetings/meeting") if m.findtext("meetingID") == first_id)
        assert (meeting.findtext("participantCount"), meeting.findtext("moderatorCount")) == ("3", "1")

    run_with_fleet(test)


def test_insert_document_and_send_chat_message() -> None:
    async def test(fleet: FakeFleet) -> None:
        node = fleet.nodes[0]
        await call(node, "create", "name=Room&meetingID=room-4")
        body = b'<modules><module name="presentation"><document name="a.pdf">JVBERi0=</document></module></modules>'
        url = node.api_url("insertDocument", "meetingID=room-4")
        response = await fetch(url, "POST", body, {"Content-Type": "application/xml"})
        assert etree.fromstring(response.body).findtext("returncode") == "SUCCESS"
        assert node.meetings["room-4"].inserted_documents == [body]
        assert node.requests[-1].body == body
        assert (await fetch(url)).code == 405
        unknown = await fetch(
            node.api_url("insertDocument", "meetingID=zz"), "POST", body, {"Content-Type": "text/xml"}
        )
        assert etree.fromstring(unknown.body).findtext("message") == "Meeting with id [zz] not found."
        chat = await call(node, "sendChatMessage", "meetingID=room-4&message=Hello+%3Cb%3E")
        assert chat.findtext("returncode") == "SUCCESS"
        assert node.meetings["room-4"].chat_messages == [("System", "Hello <b>")]

    run_with_fleet(test)


# --- modes, load endpoint, callbacks -------------------------------------------------


def test_load_endpoint_and_failure_modes() -> None:
    async def test(fleet: FakeFleet) -> None:
        node = fleet.nodes[0]
        node.cpu = 5713
        loaded = await fetch(node.load_url)
        assert (loaded.code, loaded.body) == (200, b"5713\n")
        node.mode = "garbage"
        garbage = await fetch(node.api_url("getMeetings"))
        assert garbage.code == 200
        with pytest.raises(etree.XMLSyntaxError):
            etree.fromstring(garbage.body)
        node.mode = "error"
        assert (await fetch(node.api_url("getMeetings"))).code == 500
        assert (await fetch(node.load_url)).code == 500
        node.mode = "failed"
        failed = await fetch(node.api_url("getMeetings"))
        assert (failed.code, etree.fromstring(failed.body).findtext("returncode")) == (200, "FAILED")
        node.mode = "slow"
        node.delay = 0.3
        started = time.monotonic()
        slow = await fetch(node.load_url)
        assert time.monotonic() - started >= 0.3
        assert slow.body == b"5713\n"
        with pytest.raises(ValueError, match="unknown mode"):
            node.mode = "broken"

    run_with_fleet(test)


def test_poll_shortcut_of_a_non_recording_fleet_answers_like_the_handlers() -> None:
    """A fleet that records nothing answers load and getMeetings on a shortcut (fakebbb_fast.py)."""

    async def main() -> None:
        async with FakeFleet(1, secret=S1) as recording, FakeFleet(1, secret=S1, record_requests=False) as quick:
            answers = []
            for fleet in (recording, quick):
                node = fleet.nodes[0]
                node.cpu = 4200
                query = "meetingID=m-1&name=Room+%C3%A4&attendeePW=ap&moderatorPW=mp"
                created = await fetch(node.api_url("create", query))
                assert ("Server" in created.headers) is (fleet is recording)
                assert etree.fromstring(created.body).findtext("returncode") == "SUCCESS"
                repeat = etree.fromstring((await fetch(node.api_url("create", query))).body)
                assert repeat.findtext("messageKey") == "duplicateWarning"
                clash = await fetch(node.api_url("create", "meetingID=m-1&name=Room&attendeePW=other"))
                assert etree.fromstring(clash.body).findtext("messageKey") == "idNotUnique"
                loaded = await fetch(node.load_url)
                listed = await fetch(node.api_url("getMeetings"))
                # RequestHandlers send a Server header, the shortcut does not: each fleet took its path
                assert ("Server" in listed.headers) is (fleet is recording)
                # the node's own document, byte for byte (meeting ids and passwords differ per fleet)
                assert listed.body == node.meetings_document()
                names = [(m.findtext("meetingID"), m.findtext("meetingName"))
                         for m in etree.fromstring(listed.body).iterfind("meetings/meeting")]
                answers.append((loaded.code, loaded.body, listed.code, listed.headers["Content-Type"], names))
                # the two read-only meeting calls: on the shortcut when it can answer, else by the handlers
                running = await fetch(node.api_url("isMeetingRunning", "meetingID=m-1"))
                info = await fetch(node.api_url("getMeetingInfo", "meetingID=m-1"))
                assert ("Server" in running.headers) is ("Server" in info.headers) is (fleet is recording)
                assert etree.fromstring(running.body).findtext("running") == "false"  # nobody joined yet
                assert etree.fromstring(info.body).findtext("meetingName") == "Room \u00e4"
                unknown = await fetch(node.api_url("getMeetingInfo", "meetingID=nope"))
                no_id = await fetch(node.api_url("isMeetingRunning", ""))
                assert "Server" in unknown.headers and "Server" in no_id.headers  # errors: the handlers
                assert etree.fromstring(unknown.body).findtext("messageKey") == "notFound"
                assert etree.fromstring(no_id.body).findtext("messageKey") == "missingParamMeetingID"
                answers.append((running.body, info.headers["Content-Type"]))  # info's times differ per fleet
                # a bad checksum, a POST and a failure mode still take the regular handlers
                bad = await fetch(node.api_url("getMeetings")[:-4] + "0000")
                assert etree.fromstring(bad.body).findtext("messageKey") == "checksumError"
                node.mode = "error"
                assert (await fetch(node.api_url("getMeetings"))).code == 500
                assert (await fetch(node.load_url)).code == 500
            assert answers[0] == answers[2] and answers[1] == answers[3]
            assert answers[2] == (200, b"4200\n", 200, "text/xml;charset=utf-8", [("m-1", "Room \u00e4")])
            assert recording.nodes[0].requests and not quick.nodes[0].requests

    asyncio.run(main())


def test_slow_node_does_not_block_other_nodes() -> None:
    async def test(fleet: FakeFleet) -> None:
        slow, fast = fleet.nodes
        slow.mode, slow.delay = "slow", 1.0
        slow_request = asyncio.ensure_future(fetch(slow.load_url))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        assert (await fetch(fast.load_url)).code == 200
        assert time.monotonic() - started < 0.5
        assert not slow_request.done()
        assert (await slow_request).code == 200

    run_with_fleet(test, count=2)


def test_down_refuses_connections_and_up_serves_again() -> None:
    async def test(fleet: FakeFleet) -> None:
        down, other = fleet.nodes
        down.populate(1, 1)
        down.set_down()
        assert down.mode == "down"
        with pytest.raises(ConnectionRefusedError):
            await fetch(down.load_url)
        assert (await fetch(other.load_url)).code == 200
        down.set_up()
        assert down.mode == "ok"
        listed = await call(down, "getMeetings")
        assert len(listed.findall("meetings/meeting")) == 1

    run_with_fleet(test, count=2)


class CallbackReceiver(RequestHandler):
    def initialize(self, received: list[str]) -> None:
        self.received = received

    def get(self) -> None:
        self.received.append(self.request.uri or "")
        self.set_status(204)


async def start_receiver(received: list[str]) -> tuple[HTTPServer, int]:
    sockets = bind_sockets(0, address="127.0.0.1")
    server = HTTPServer(Application([(r"/ended", CallbackReceiver, {"received": received})]))
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


def test_end_callback_is_delivered_with_encoded_parameters() -> None:
    meeting_id = "raum & 1+ü"

    async def test(fleet: FakeFleet) -> None:
        received: list[str] = []
        server, port = await start_receiver(received)
        node = fleet.nodes[0]
        callback = quoted(f"http://127.0.0.1:{port}/ended?room=a%26b")
        await call(node, "create", f"name=Room&meetingID={quoted(meeting_id)}&meta_endCallbackUrl={callback}")
        await fleet.end_meeting(node, meeting_id, recordingmarks=True)
        assert meeting_id not in node.meetings
        assert len(received) == 1
        assert urlsplit(received[0]).path == "/ended"
        params = parse_qsl(urlsplit(received[0]).query)
        assert params == [("room", "a&b"), ("recordingmarks", "true"), ("meetingID", meeting_id)]
        await call(
            node, "create", f"name=Room&meetingID=r2&meta_endcallbackurl={quoted(f'http://127.0.0.1:{port}/ended')}"
        )
        assert (await call(node, "end", "meetingID=r2")).findtext("returncode") == "SUCCESS"
        for _ in range(100):  # the API end call sends its callback in the background
            if len(received) == 2:
                break
            await asyncio.sleep(0.02)
        assert parse_qsl(urlsplit(received[1]).query) == [("recordingmarks", "false"), ("meetingID", "r2")]
        server.stop()

    run_with_fleet(test)


def test_host_header_selects_node_and_socket_address_is_the_fallback() -> None:
    async def test(fleet: FakeFleet) -> None:
        first, second = fleet.nodes
        first.cpu, second.cpu = 11, 22
        via_host = await fetch(first.load_url, headers={"Host": f"{second.domain}:{fleet.port}"})
        assert via_host.body == b"22\n"
        via_socket = await fetch(first.load_url, headers={"Host": "unknown.example.org"})
        assert via_socket.body == b"11\n"
        assert (len(first.requests), len(second.requests)) == (1, 1)

    run_with_fleet(test, count=2)


def test_fleet_of_300_nodes_answers_on_each_address_and_stops_cleanly() -> None:
    async def main() -> None:
        fleet = FakeFleet(300)
        await fleet.start()
        assert len({node.domain for node in fleet.nodes}) == 300
        assert fleet.nodes[299].domain == node_domain(299) == "127.0.2.50"
        assert {node.port for node in fleet.nodes} == {fleet.port}
        assert len({node.secret for node in fleet.nodes}) == 300
        for index, node in enumerate(fleet.nodes):
            node.cpu = index
        client = AsyncHTTPClient(force_instance=True, max_clients=100)
        responses = await asyncio.gather(*(client.fetch(node.load_url) for node in fleet.nodes))
        assert [response.body for response in responses] == [f"{index}\n".encode() for index in range(300)]
        assert all(len(node.requests) == 1 for node in fleet.nodes)
        await fleet.stop()
        with pytest.raises((ConnectionRefusedError, HTTPClientError)):
            await client.fetch(fleet.nodes[123].load_url)
        client.close()

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 10
