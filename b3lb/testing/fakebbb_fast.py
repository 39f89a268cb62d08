"""The poll's two documents, create and the two read-only meeting calls, answered without a RequestHandler.

In the benchmarks one fleet process stands in for many machines. Through Tornado's
RequestHandler its 2,000 answers per poll cycle took the fleet's core longer than b3lb took for
the whole cycle, and during the create scenario the fake node's handlers, not b3lb, set the pace; in the forwarded-call
scenarios (isMeetingRunning, getMeetingInfo) the handlers took some 210 µs of the generator's core
per call, more than b3lb's own work, so those scenarios measured the fake fleet.
Only a GET of the load file, or of a correctly signed getMeetings, create, isMeetingRunning (with a
meetingID) or getMeetingInfo (of a meeting the node has), for a node in mode
"ok" of a fleet that records nothing, takes this path (with the same answer code as the
handlers); anything else (other calls, modes, recording, bad checksums) goes through the regular
handlers unchanged. The fleet's modes (gzip, chunked, churn, TLS) apply here as in the handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPMessageDelegate,
    RequestStartLine,
    ResponseStartLine,
)
from tornado.web import Application

from b3lb.testing import fakebbb_xml as bbb_xml
from b3lb.testing.fakebbb_modes import accepts_gzip, write_answer
from b3lb.testing.fakebbb_xml import checksum_is_valid, parse_query

if TYPE_CHECKING:
    from b3lb.testing.fakebbb import FakeFleet, FakeNode

XML_TYPE = "text/xml;charset=utf-8"
QUICK_CALLS = frozenset({"create", "isMeetingRunning", "getMeetingInfo"})  # and getMeetings, above


class PollShortcutApplication(Application):
    """The fleet's Application, with the poll's documents and create answered on the connection."""

    fleet: FakeFleet

    def start_request(self, server_conn: object, request_conn: HTTPConnection) -> HTTPMessageDelegate:
        return PollShortcut(self.fleet, super().start_request(server_conn, request_conn), request_conn)


class PollShortcut(HTTPMessageDelegate):
    def __init__(self, fleet: FakeFleet, regular: HTTPMessageDelegate, connection: HTTPConnection) -> None:
        self.fleet, self.regular, self.connection = fleet, regular, connection
        self.answer: tuple[str, bytes] | None = None
        self.node: FakeNode | None = None
        self.gzip = False

    def headers_received(
        self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, RequestStartLine)
        self.answer = self._quick_answer(start_line, headers)
        if self.answer is not None and self.fleet.gzip:
            self.gzip = accepts_gzip(headers.get("Accept-Encoding", ""))
        return self.regular.headers_received(start_line, headers) if self.answer is None else None

    def _quick_answer(self, start_line: RequestStartLine, headers: HTTPHeaders) -> tuple[str, bytes] | None:
        if self.fleet.record_requests or start_line.method != "GET":
            return None
        node = self.fleet.find_node(headers.get("Host", "").rsplit(":", 1)[0])
        if node is None or node.mode != "ok" or node.call_modes:
            return None
        self.node = node
        path, _, query = start_line.path.partition("?")
        if path == "/b3lb/load":
            return "text/plain", f"{node.cpu}\n".encode()
        if path == "/bigbluebutton/api/getMeetings" and checksum_is_valid("getMeetings", query, node.secret):
            return XML_TYPE, node.get_meetings_document()
        call = path.removeprefix("/bigbluebutton/api/")
        if call not in QUICK_CALLS or not checksum_is_valid(call, query, node.secret):
            return None
        if call == "create":
            return XML_TYPE, node.create_answer(parse_query(query))
        meeting_id = parse_query(query).get("meetingID", "")
        meeting = node.meetings.get(meeting_id)
        if call == "isMeetingRunning" and meeting_id:  # as FakeApiHandler.is_meeting_running
            return XML_TYPE, bbb_xml.running(meeting is not None and meeting.running)
        if call == "getMeetingInfo" and meeting is not None:  # as FakeApiHandler.get_meeting_info
            return XML_TYPE, bbb_xml.meeting_info(meeting.xml_fields())
        return None  # the handlers give the error answers

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.regular.data_received(chunk) if self.answer is None else None

    def finish(self) -> None:
        if self.answer is None or self.node is None:
            self.regular.finish()
            return
        content_type, body = self.answer
        write_answer(self.connection, self.node, content_type, body, gzip=self.gzip, chunked=self.fleet.chunked)

    def on_connection_close(self) -> None:
        if self.answer is None:
            self.regular.on_connection_close()
