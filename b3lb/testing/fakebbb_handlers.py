"""The request handlers of the fake BBB fleet (see b3lb.testing.fakebbb), one Application for all nodes.

Every path first finds its node (Host header, else the address the connection was accepted on) and
applies the node's mode; the answers then pass the fleet's wire encoding (gzip, chunked:
b3lb.testing.fakebbb_modes). `POST /fleet/end-all` is the fleet's own control call, not BBB's.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, ClassVar

from tornado.web import Application, RequestHandler

from b3lb.testing import fakebbb_xml as bbb_xml
from b3lb.testing.fakebbb_fast import PollShortcutApplication
from b3lb.testing.fakebbb_modes import encoding_transform
from b3lb.testing.fakebbb_xml import (
    FakeMeeting,
    RecordedRequest,
    attendee_from_params,
    checksum_is_valid,
    parse_query,
)

if TYPE_CHECKING:
    from b3lb.testing.fakebbb import FakeFleet, FakeNode

GARBAGE_BODY = b"\x00<<this is not XML>> \xff\xfe garbage from a broken node"
SUPPORTED_POST_CONTENT_TYPES = frozenset(
    {"application/xml", "text/xml", "application/x-www-form-urlencoded", "multipart/form-data"}
)


class FakeNodeHandler(RequestHandler):
    """Base for every path of a fake node: finds the node, records the request, applies its mode."""

    SUPPORTED_METHODS = ("GET", "POST", "HEAD")
    node: FakeNode  # set by prepare()

    def initialize(self, fleet: FakeFleet) -> None:
        self.fleet = fleet

    def recorded_call(self) -> str:
        return self.request.path

    def _find_node(self) -> FakeNode | None:
        node = self.fleet.find_node(self.request.host_name)
        if node is None:  # Host header names no node: use the address the socket was accepted on
            stream = getattr(self.request.connection, "stream", None)
            if stream is not None and stream.socket is not None:
                node = self.fleet.find_node(stream.socket.getsockname()[0])
        return node

    async def prepare(self) -> None:
        node = self._find_node()
        if node is None:
            self.send_not_found()
            return
        self.node = node
        request = self.request
        content_type = request.headers.get("Content-Type", "")
        node.record(
            RecordedRequest(
                request.method or "",
                self.recorded_call(),
                request.query,
                request.body,
                content_type,
                dict(request.headers),
                request.path,
            )
        )
        mode = node.call_modes.get(request.path.rsplit("/", 1)[-1], node.mode) if node.call_modes else node.mode
        if mode == "down":  # a keep-alive connection outlived set_down(): drop it like a dead host
            self.detach().close()
        elif mode == "stall":
            await asyncio.sleep(node.delay)
            self.detach().close()
        elif mode == "slow":
            await asyncio.sleep(node.delay)
        elif mode == "late-error":
            await asyncio.sleep(node.delay)
            self.set_status(500)
            self.finish("Internal Server Error")
        elif mode == "garbage":
            self.set_header("Content-Type", "text/html")
            self.finish(GARBAGE_BODY)
        elif mode == "error":
            self.set_status(500)
            self.finish("Internal Server Error")
        elif mode == "failed":
            self.send_xml(bbb_xml.FAILED_MODE)

    def send_xml(self, document: bytes) -> None:
        self.set_header("Content-Type", "text/xml;charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(document)

    def send_not_found(self) -> None:
        self.set_status(404)
        self.set_header("Content-Type", "text/plain")
        self.finish("Not Found")

    async def get(self, *path_args: str) -> None:
        self.send_not_found()

    async def post(self, *path_args: str) -> None:
        await self.get(*path_args)

    async def head(self, *path_args: str) -> None:
        await self.get(*path_args)


class FakeLoadHandler(FakeNodeHandler):
    """B3LB load endpoint (spec 4.11): CPU load 0..10000 and a newline."""

    async def get(self, *path_args: str) -> None:
        self.set_header("Content-Type", "text/plain")
        self.finish(f"{self.node.cpu}\n")


class FakeClientJoinHandler(FakeNodeHandler):
    """Target of join redirects, so clients that follow redirects get a page."""

    async def get(self, *path_args: str) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(f"<html><body>fake BBB client on {self.node.name}</body></html>")


class FakeApiHandler(FakeNodeHandler):
    """The BBB API calls a load balancer uses (spec 2.2-2.10)."""

    # call name -> (allowed methods, handler method name)
    CALLS: ClassVar[dict[str, tuple[tuple[str, ...], str]]] = {
        "create": (("GET", "POST"), "create"),
        "join": (("GET",), "join"),
        "end": (("GET", "POST"), "end"),
        "isMeetingRunning": (("GET", "POST"), "is_meeting_running"),
        "getMeetingInfo": (("GET", "POST"), "get_meeting_info"),
        "getMeetings": (("GET", "POST"), "get_meetings"),
        "insertDocument": (("POST",), "insert_document"),
        "sendChatMessage": (("GET",), "send_chat_message"),
    }

    def recorded_call(self) -> str:
        return self.path_args[0] if self.path_args else ""

    async def get(self, call: str = "") -> None:
        if call == "":  # the version document needs no checksum (BBB)
            self.send_xml(bbb_xml.VERSION)
            return
        if call not in self.CALLS:
            self.send_not_found()
            return
        allowed_methods, method_name = self.CALLS[call]
        if self.request.method not in allowed_methods:
            self.set_status(405)
            self.set_header("Allow", ", ".join(allowed_methods))
            self.finish()
        elif not checksum_is_valid(call, self.request.query, self.node.secret):
            self.send_xml(bbb_xml.CHECKSUM_ERROR)
        elif self.request.method == "POST" and not self._content_type_supported():
            self.send_xml(bbb_xml.failed("unsupportedContentType", bbb_xml.MESSAGE_UNSUPPORTED_CONTENT_TYPE))
        else:
            getattr(self, method_name)(parse_query(self.request.query))

    def _content_type_supported(self) -> bool:
        media_type = self.request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        return media_type in SUPPORTED_POST_CONTENT_TYPES

    def _meeting_or_fail(self, params: dict[str, str], not_found_key: str = "notFound") -> FakeMeeting | None:
        """The requested meeting, or None after answering missingParamMeetingID / not found."""
        meeting_id = params.get("meetingID", "")
        if not meeting_id:
            self.send_xml(bbb_xml.failed("missingParamMeetingID", bbb_xml.MESSAGE_MISSING_MEETING_ID))
            return None
        meeting = self.node.meetings.get(meeting_id)
        if meeting is None:
            self.send_xml(bbb_xml.failed(not_found_key, bbb_xml.MESSAGE_MEETING_NOT_FOUND))
        return meeting

    def create(self, params: dict[str, str]) -> None:
        self.send_xml(self.node.create_answer(params))

    def join(self, params: dict[str, str]) -> None:
        meeting = self._meeting_or_fail(params, "invalidMeetingIdentifier")
        if meeting is None:
            return
        full_name = params.get("fullName", "")
        create_time = params.get("createTime", "")
        if not full_name:
            message = "You must specify a name for the attendee who will be joining the meeting."
            self.send_xml(bbb_xml.failed("missingParamFullName", message))
        elif create_time and create_time != str(meeting.create_time):
            self.send_xml(bbb_xml.failed("mismatchCreateTimeParam", bbb_xml.MESSAGE_CREATE_TIME_MISMATCH))
        elif meeting.max_users and len(meeting.attendees) >= meeting.max_users:
            self.send_xml(bbb_xml.failed("maxParticipantsReached", bbb_xml.MESSAGE_MAX_PARTICIPANTS))
        else:
            attendee = attendee_from_params(meeting, params)
            self.node.add_attendee(meeting.meeting_id, attendee)
            url = f"{self.node.base_url}/html5client/join?sessionToken={attendee.session_token}"
            if params.get("redirect", "").lower() == "false":
                self.send_xml(bbb_xml.join_success(meeting, attendee, url))
            else:
                self.redirect(url)

    def end(self, params: dict[str, str]) -> None:
        meeting = self._meeting_or_fail(params)
        if meeting is None:
            return
        password = params.get("password", "")
        if password and password != meeting.moderator_pw:
            self.send_xml(bbb_xml.failed("invalidPassword", bbb_xml.MESSAGE_INVALID_PASSWORD))
            return
        self.node.remove_meeting(meeting.meeting_id)
        self.fleet.spawn(self.fleet.meeting_ended(self.node, meeting))
        self.send_xml(bbb_xml.END_SUCCESS)

    def is_meeting_running(self, params: dict[str, str]) -> None:
        meeting_id = params.get("meetingID", "")
        if not meeting_id:
            self.send_xml(bbb_xml.failed("missingParamMeetingID", bbb_xml.MESSAGE_MISSING_MEETING_ID))
            return
        meeting = self.node.meetings.get(meeting_id)
        self.send_xml(bbb_xml.running(meeting is not None and meeting.running))

    def get_meeting_info(self, params: dict[str, str]) -> None:
        meeting = self._meeting_or_fail(params)
        if meeting is not None:
            self.send_xml(bbb_xml.meeting_info(meeting.xml_fields()))

    def get_meetings(self, params: dict[str, str]) -> None:
        self.send_xml(self.node.get_meetings_document())

    def insert_document(self, params: dict[str, str]) -> None:
        meeting_id = params.get("meetingID", "")
        meeting = self.node.meetings.get(meeting_id)
        if not meeting_id:
            self.send_xml(bbb_xml.failed("missingParamMeetingID", bbb_xml.MESSAGE_MISSING_MEETING_ID))
        elif meeting is None:  # BBB's own wording for this call: no messageKey
            self.send_xml(bbb_xml.failed(None, f"Meeting with id [{meeting_id}] not found."))
        else:
            meeting.inserted_documents.append(self.request.body)
            self.send_xml(bbb_xml.INSERT_DOCUMENT_SUCCESS)

    def send_chat_message(self, params: dict[str, str]) -> None:
        meeting = self._meeting_or_fail(params)
        if meeting is not None:
            meeting.chat_messages.append((params.get("userName") or "System", params.get("message", "")))
            self.send_xml(bbb_xml.CHAT_SUCCESS)


class FleetControlHandler(RequestHandler):
    """`POST /fleet/end-all` on any node's address: every meeting of every node ends; answers the count."""

    SUPPORTED_METHODS = ("POST",)

    def initialize(self, fleet: FakeFleet) -> None:
        self.fleet = fleet

    async def post(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.finish(f"{self.fleet.end_all()}\n")


def _log_nothing(handler: RequestHandler) -> None:
    """Access logging of thousands of polls per second would drown benchmark output."""


def make_application(fleet: FakeFleet) -> Application:
    handler_args = {"fleet": fleet}
    application = PollShortcutApplication(
        [
            (r"/bigbluebutton/api/?", FakeApiHandler, handler_args),
            (r"/bigbluebutton/api/([^/]+)", FakeApiHandler, handler_args),
            (r"/b3lb/load", FakeLoadHandler, handler_args),
            (r"/html5client/join", FakeClientJoinHandler, handler_args),
            (r"/fleet/end-all", FleetControlHandler, handler_args),
        ],
        transforms=[encoding_transform(fleet)],
        default_handler_class=FakeNodeHandler,
        default_handler_args=handler_args,
        log_function=_log_nothing,
    )
    application.fleet = fleet
    return application


