"""The API's fast paths (b3lb/lazyquery.py, b3lb/api/handler.py): routing before Tornado's router
walk, requests built without HTTPServerRequest.__init__ once their Host passed its checks, calls
run inside the connection's own task, answers formatted in one go. Each must answer exactly as
the generic path (Tornado's routing and write_headers) does."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
from api_helpers import create_ok, owner, q, xml
from tornado.httputil import HTTPHeaders, RequestStartLine

from b3lb.api import handler
from b3lb.api.xml import ApiResult
from b3lb.lazyquery import LazyQueryRequest, _fast_rules
from b3lb.testing.harness import BASE_DOMAIN, Harness

HOST = f"abc.{BASE_DOMAIN}"


async def read_answer(reader: asyncio.StreamReader, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = b"" if head_request else await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), headers, body


async def exchange(h: Harness, requests: list[bytes]) -> tuple[list[tuple[int, dict[str, str], bytes]], bool]:
    """Send the requests one after the other on one connection; each answer (framed by its
    Content-Length), and whether the server closed the connection after the last one (a further
    request then gets no answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            await writer.drain()
            answers.append(await read_answer(reader, request.startswith(b"HEAD ")))
        try:
            writer.write(get("/bigbluebutton/api"))
            await writer.drain()
            closed = (await read_answer(reader))[0] != 200
        except (asyncio.IncompleteReadError, ConnectionError):
            closed = True
    finally:
        writer.close()
    return answers, closed


def get(path: str, version: str = "HTTP/1.1", extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} {version}\r\nHost: {HOST}\r\n{extra}\r\n".encode()


@pytest.mark.gen_test(timeout=30)
async def test_connection_headers_as_tornado_writes_them(db_url: str) -> None:
    async with Harness(db_url, nodes=1) as h:
        await create_ok(h, "room")
        running = "/bigbluebutton/api/isMeetingRunning?" + h.signed("isMeetingRunning", q(meetingID="room"), h.secret())
        join = "/bigbluebutton/api/join?" + h.signed("join", q(meetingID="room", fullName="Ann", role="VIEWER"),
                                                      h.secret())
        # HTTP/1.1 keeps the connection without saying so, for calls answered at once and forwarded ones
        answers, closed = await exchange(h, [get(join), get(running), get(join)])
        assert [a[0] for a in answers] == [302, 200, 302] and not closed
        assert all("connection" not in a[1] for a in answers)
        assert answers[1][1]["content-type"] == "text/xml;charset=utf-8" and b"<returncode>SUCCESS" in answers[1][2]
        assert urlsplit(answers[0][1]["location"]).hostname == owner(h, "room").domain
        # ... and says so when the client closes it
        answers, closed = await exchange(h, [get(running, extra="Connection: close\r\n")])
        assert answers[0][0] == 200 and answers[0][1]["connection"] == "close" and closed
        # HTTP/1.0: kept only when asked for, and then confirmed
        answers, closed = await exchange(h, [get(running, "HTTP/1.0", "Connection: keep-alive\r\n")] * 2)
        assert [a[0] for a in answers] == [200, 200] and not closed
        assert all(a[1]["connection"] == "Keep-Alive" for a in answers)
        answers, closed = await exchange(h, [get(join, "HTTP/1.0")])
        assert answers[0][0] == 302 and "connection" not in answers[0][1] and closed
        # HEAD of the version document: the length of the body it does not send
        answers, closed = await exchange(h, [get("/bigbluebutton/api", method="HEAD"), get("/bigbluebutton/api")])
        assert answers[0][0] == answers[1][0] == 200 and not closed
        assert int(answers[0][1]["content-length"]) == len(answers[1][2]) > 0 and answers[0][2] == b""
        for _, headers, _ in answers:
            assert headers["cache-control"] == "no-cache" and headers["date"].endswith(" GMT")


@pytest.mark.gen_test(timeout=30)
async def test_a_header_value_with_a_line_break_is_never_sent(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with Harness(db_url, nodes=1) as h:
        for bad in ("a\r\nInjected: yes", "a\nInjected: yes", "a\rInjected: yes"):

            async def splitting(runtime, req, bad=bad):  # noqa: ANN001, ANN202 - its answer would split the head
                return ApiResult(b"<response/>", headers={"X-Test": bad})

            monkeypatch.setitem(handler.CALLS, "isMeetingRunning", (handler.GET_POST, splitting))
            r = await h.call("isMeetingRunning", "meetingID=x")
            assert r.code == 500 and "Injected" not in r.headers and "X-Test" not in r.headers
            assert xml(r).findtext("messageKey") == "internalError"
        monkeypatch.undo()
        assert (await h.call("isMeetingRunning", "meetingID=x")).code == 200


@pytest.mark.gen_test(timeout=30)
async def test_fast_routes_match_tornados_routes(db_url: str) -> None:
    async with Harness(db_url, nodes=1) as h:
        assert h.server is not None
        app = h.server.request_callback
        rules = _fast_rules(app)  # type: ignore[arg-type]
        assert len(rules) == 4  # the API's four rules lead the table
        headers = HTTPHeaders({"Host": HOST})
        for path in (
            "/bigbluebutton/api", "/bigbluebutton/api/", "/bigbluebutton/api/join", "/bigbluebutton/api/get.Meetings",
            "/b3lb/t/abc/bbb/api", "/b3lb/t/abc/bbb/api/", "/b3lb/t/abc/bbb/api/create", "/b3lb/t/abc-007/bbb/api/end",
            "/bigbluebutton/api/join/x", "/bigbluebutton/api/jo%69n", "/b3lb/ping", "/b3lb/t/abc/stats", "/nothing",
        ):
            start_line = RequestStartLine("GET", f"{path}?a=b", "HTTP/1.1")
            request = LazyQueryRequest.from_start_line(start_line, headers=headers)
            tornado = app.find_handler(request)  # type: ignore[attr-defined]
            fast = next((target.exchange(request, m) for regex, target in rules if (m := regex.match(path))), None)
            if isinstance(tornado, handler.ApiExchange):
                assert isinstance(fast, handler.ApiExchange), path
                assert (fast.call, fast.slug, fast.sub) == (tornado.call, tornado.slug, tornado.sub), path
            else:
                assert fast is None, path


@pytest.mark.gen_test(timeout=30)
async def test_a_bad_host_is_refused_also_after_good_ones(db_url: str) -> None:
    """The Host checks are skipped only for a value that passed them before."""
    async with Harness(db_url, nodes=1) as h:
        call = "/bigbluebutton/api/getMeetings?" + h.signed("getMeetings", "", h.secret())
        bad = [
            f"GET {call} HTTP/1.1\r\nHost: {HOST}\r\nHost: {HOST}\r\n\r\n".encode(),  # two Host headers
            f"GET {call} HTTP/1.1\r\n\r\n".encode(),  # none
            f"GET {call} HTTP/1.1\r\nHost: {HOST}/x\r\n\r\n".encode(),
        ]
        for rounds in range(2):
            answers, _ = await exchange(h, [get(call)] * 3)
            assert [a[0] for a in answers] == [200] * 3
            for request in bad:
                reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
                writer.write(request)
                answer = await asyncio.wait_for(reader.read(-1), timeout=5)
                writer.close()
                assert answer.startswith(b"HTTP/1.1 400 "), (rounds, request, answer[:80])


@pytest.mark.gen_test(timeout=30)
async def test_join_of_a_meeting_only_in_the_database(db_url: str) -> None:
    """A meeting another instance created: not in memory, found by the lookup (the awaiting path)."""
    async with Harness(db_url, nodes=2) as h:
        assert h.runtime is not None and h.pool is not None
        entry = next(iter(h.runtime.loads.nodes.values()))
        await h.pool.execute(
            "INSERT INTO meeting (secret_id, meeting_id, meeting_name, node_id) VALUES ($1, 'elsewhere', 'Room', $2)",
            h.tenants["ABC"].secrets[0][0], entry.node.id)
        r = await h.call("join", q(meetingID="elsewhere", fullName="Ann", role="VIEWER"))
        assert r.code == 302 and urlsplit(r.headers["Location"]).hostname == entry.node.domain
        r = await h.call("join", q(meetingID="nowhere", fullName="Ann", role="VIEWER", redirect="false"))
        assert r.code == 200 and xml(r).findtext("messageKey") == "invalidMeetingIdentifier"


@pytest.mark.gen_test(timeout=30)
async def test_a_call_goes_on_when_its_client_leaves(db_url: str) -> None:
    """A forwarded call runs inside the connection's task: a client that closes before the answer
    neither stops it nor breaks the server."""
    async with Harness(db_url, nodes=1) as h:
        await create_ok(h, "room")
        node = owner(h, "room")
        path = "/bigbluebutton/api/end?" + h.signed("end", q(meetingID="room"), h.secret())
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(get(path))
        await writer.drain()
        writer.close()
        for _ in range(100):  # bounded wait for the call to reach the node
            if "room" not in node.meetings:
                break
            await asyncio.sleep(0.05)
        assert "room" not in node.meetings
        r = await h.call("isMeetingRunning", q(meetingID="room"))
        assert r.code == 200 and xml(r).findtext("running") == "false"
