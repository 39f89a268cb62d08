"""A fake fleet of BigBlueButton nodes for tests and benchmarks.

Every node gets its own loopback address (127.0.X.Y) and all nodes share one TCP
port, so node domains are unique (the database requires that) while 1,000 nodes
cost one listening socket each and a single Tornado ``HTTPServer``. A request is
routed to its node by the address part of the ``Host`` header, falling back to
the local address of the socket it arrived on.

Wire behaviour follows /work/shared/spec/bbb-api.md: checksum rules (1.1-1.5),
the API calls the load balancer uses (2.3-2.10), the end callback (3.1) and the
B3LB load endpoint (4.11).

Run ``python -m b3lb.testing.fakebbb --nodes 10`` for a standalone fleet.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import secrets
import socket
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Self

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream
from tornado.netutil import add_accept_handler, bind_sockets
from tornado.web import Application, RequestHandler

from b3lb.testing import fakebbb_xml as bbb_xml
from b3lb.testing.fakebbb_fast import PollShortcutApplication
from b3lb.testing.fakebbb_xml import (
    FakeAttendee,
    FakeMeeting,
    RecordedRequest,
    append_query,
    attendee_from_params,
    checksum_is_valid,
    create_validation_error,
    is_loopback_url,
    meeting_from_params,
    parse_query,
    passwords_match,
    sign_query,
)
from b3lb.testing.fakerecording import FakeRecorder

__all__ = [
    "FakeAttendee",
    "FakeFleet",
    "FakeMeeting",
    "FakeNode",
    "RecordedRequest",
    "checksum_is_valid",
    "main",
    "node_domain",
    "parse_query",
    "sign_query",
]

log = logging.getLogger(__name__)

# "stall": wait `delay` seconds, then drop the connection without doing anything;
# "late-error": wait `delay` seconds, then answer HTTP 500 without doing anything.
MODES = frozenset({"ok", "slow", "garbage", "error", "failed", "down", "stall", "late-error"})
GARBAGE_BODY = b"\x00<<this is not XML>> \xff\xfe garbage from a broken node"
CALLBACK_TIMEOUT_SECONDS = 3.0
SUPPORTED_POST_CONTENT_TYPES = frozenset(
    {"application/xml", "text/xml", "application/x-www-form-urlencoded", "multipart/form-data"}
)


def node_domain(index: int) -> str:
    """Loopback address of node ``index`` (0-based): 250 nodes per 127.0.X.0/24 block."""
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


class FakeNode:
    """One emulated BBB server of a FakeFleet."""

    def __init__(self, fleet: FakeFleet, index: int, secret: str) -> None:
        self.name: str = f"fake-{index + 1:04d}"
        self.domain: str = node_domain(index)
        self.port: int = 0
        self.secret: str = secret
        self.cpu: int = 0
        self.delay: float = 0.0
        self.meetings: dict[str, FakeMeeting] = {}
        self.requests: list[RecordedRequest] = []
        self._mode: str = "ok"
        # API call name -> mode for that call only (e.g. {"create": "failed"}: creates fail, polls fine)
        self.call_modes: dict[str, str] = {}
        self._fleet = fleet
        self._socket: socket.socket | None = None
        self._remove_accept_handler: Callable[[], None] | None = None
        self._meetings_document: bytes | None = None
        self._document_meeting_count = 0

    def __repr__(self) -> str:
        return f"FakeNode({self.name}, {self.domain}:{self.port}, mode={self._mode})"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        """Setting "down" really closes the socket; leaving "down" opens it again."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}, expected one of {sorted(MODES)}")
        if mode == "down" and self._mode != "down":
            self._fleet.stop_listening(self)
        elif mode != "down" and self._mode == "down":
            self._fleet.start_listening(self)
        self._mode = mode

    @property
    def api_base(self) -> str:
        return f"http://{self.domain}:{self.port}/bigbluebutton/api/"

    @property
    def load_url(self) -> str:
        return f"http://{self.domain}:{self.port}/b3lb/load"

    def set_down(self) -> None:
        self.mode = "down"

    def set_up(self) -> None:
        self.mode = "ok"

    def api_url(self, call: str, query: str = "", algorithm: str = "sha256") -> str:
        """Signed URL of an API call on this node."""
        return self.api_base + call + "?" + sign_query(call, query, self.secret, algorithm)

    def mark_changed(self) -> None:
        """Drop cached XML; needed after changing meetings or attendees directly."""
        self._meetings_document = None
        for meeting in self.meetings.values():
            meeting.mark_changed()

    def meetings_document(self) -> bytes:
        """The getMeetings answer, rebuilt only when this node's meetings changed."""
        if self._meetings_document is None or self._document_meeting_count != len(self.meetings):
            if self.meetings:
                document = bbb_xml.meetings_list(m.xml_fields() for m in self.meetings.values())
            else:
                document = bbb_xml.NO_MEETINGS
            self._meetings_document = document
            self._document_meeting_count = len(self.meetings)
        return self._meetings_document

    def add_meeting(self, meeting: FakeMeeting) -> FakeMeeting:
        self.meetings[meeting.meeting_id] = meeting
        self._meetings_document = None
        return meeting

    def create_answer(self, params: dict[str, str]) -> bytes:
        """BBB's answer to a checked create: new meeting, idempotent repeat, or an error document."""
        meeting_id = params.get("meetingID", "")
        error = create_validation_error(meeting_id, params.get("name"))
        if error is not None:
            return error
        existing = self.meetings.get(meeting_id)
        if existing is None:
            return bbb_xml.create_success(self.add_meeting(meeting_from_params(params)), False)
        if passwords_match(existing, params):  # idempotent create, same internalMeetingID
            return bbb_xml.create_success(existing, True)
        return bbb_xml.failed("idNotUnique", bbb_xml.MESSAGE_ID_NOT_UNIQUE)

    def remove_meeting(self, meeting_id: str) -> FakeMeeting:
        meeting = self.meetings.pop(meeting_id)
        self._meetings_document = None
        return meeting

    def add_attendee(self, meeting_id: str, attendee: FakeAttendee) -> None:
        meeting = self.meetings[meeting_id]
        meeting.attendees.append(attendee)
        meeting.has_user_joined = True
        meeting.mark_changed()
        self._meetings_document = None

    def add_attendees(self, meeting_id: str, count: int, role: str = "VIEWER") -> None:
        meeting = self.meetings[meeting_id]
        start = len(meeting.attendees)
        for number in range(start + 1, start + count + 1):
            # Derived instead of random tokens: benchmarks add hundreds of thousands of attendees.
            user_id = f"{self.name}-{meeting_id}-user-{number}"
            meeting.attendees.append(
                FakeAttendee(
                    user_id,
                    f"Attendee {number}",
                    role,
                    internal_user_id="w_" + user_id,
                    auth_token=user_id,
                    session_token=user_id,
                )
            )
        if count > 0:
            meeting.has_user_joined = True
        meeting.mark_changed()
        self._meetings_document = None

    def populate(self, meetings: int, attendees_each: int, prefix: str = "m") -> None:
        """Bulk meetings named ``{prefix}-{node name}-{n:04d}`` (unique across the fleet)."""
        for number in range(len(self.meetings), len(self.meetings) + meetings):
            meeting_id = f"{prefix}-{self.name}-{number:04d}"
            self.add_meeting(FakeMeeting(meeting_id=meeting_id, name=f"Meeting {number}"))
            self.add_attendees(meeting_id, attendees_each)

    def record(self, request: RecordedRequest) -> None:
        if self._fleet.record_requests:
            self.requests.append(request)


class FakeFleet:
    """Many fake BBB nodes served by one Tornado HTTPServer on one shared port."""

    def __init__(self, count: int = 1, *, secret: str | None = None, port: int = 0, record_requests: bool = True,
                 recordings: bool = False) -> None:
        self.nodes: list[FakeNode] = [
            FakeNode(self, index, secret if secret is not None else secrets.token_hex(20)) for index in range(count)
        ]
        self.port: int = port
        self.record_requests = record_requests
        self._requested_port = port
        self._nodes_by_domain = {node.domain: node for node in self.nodes}
        self._server: HTTPServer | None = None
        self._http_client: AsyncHTTPClient | None = None
        self._background_tasks: set[asyncio.Task[Any]] = set()
        # recordings=True: meetings created with record=true record and upload (b3lb.testing.fakerecording).
        self.recorder = FakeRecorder(recordings)

    def node_by_domain(self, domain: str) -> FakeNode:
        return self._nodes_by_domain[domain]

    def find_node(self, domain: str) -> FakeNode | None:
        return self._nodes_by_domain.get(domain)

    async def start(self) -> None:
        self._server = HTTPServer(make_application(self), max_header_size=64 * 1024, idle_connection_timeout=60)
        self._http_client = AsyncHTTPClient(force_instance=True, max_clients=50)
        _raise_open_file_limit(len(self.nodes) + 1024)
        for attempt in range(5):
            try:
                self._bind_all()
                break
            except OSError as error:
                self._close_unregistered_sockets()
                # Another process holds the shared port on one of our addresses: try another port.
                if error.errno != errno.EADDRINUSE or self._requested_port != 0 or attempt == 4:
                    raise
        for node in self.nodes:
            if node.mode == "down":  # set down before start: a bound socket would still accept
                self.stop_listening(node)
            else:
                self._register(node)

    async def stop(self) -> None:
        for node in self.nodes:
            self.stop_listening(node)
        self._close_unregistered_sockets()
        for task in list(self._background_tasks):
            task.cancel()
        if self._background_tasks:
            await asyncio.gather(*self._background_tasks, return_exceptions=True)
        await self.recorder.close()
        if self._server is not None:
            await self._server.close_all_connections()
            self._server = None
        if self._http_client is not None:
            self._http_client.close()
            self._http_client = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _bind_all(self) -> None:
        port = self._requested_port
        for node in self.nodes:
            node._socket = bind_sockets(port, address=node.domain, flags=socket.AI_NUMERICHOST)[0]
            port = node._socket.getsockname()[1]
            node.port = port
        self.port = port

    def _close_unregistered_sockets(self) -> None:
        for node in self.nodes:
            if node._socket is not None and node._remove_accept_handler is None:
                node._socket.close()
                node._socket = None

    def _register(self, node: FakeNode) -> None:
        assert node._socket is not None
        node._remove_accept_handler = add_accept_handler(node._socket, self._accept_connection)

    def _accept_connection(self, connection: socket.socket, address: Any) -> None:
        # Our own accept handlers (instead of add_sockets) let one node's socket be closed alone.
        if self._server is None:
            connection.close()
            return
        self._server.handle_stream(IOStream(connection), address)

    def start_listening(self, node: FakeNode) -> None:
        """Re-bind a node's address on the shared port (used by set_up)."""
        if self._server is None or node._socket is not None:
            return
        node._socket = bind_sockets(self.port, address=node.domain, flags=socket.AI_NUMERICHOST)[0]
        self._register(node)

    def stop_listening(self, node: FakeNode) -> None:
        """Close a node's listening socket so new connections are refused (used by set_down)."""
        if node._remove_accept_handler is not None:
            node._remove_accept_handler()
            node._remove_accept_handler = None
        if node._socket is not None:
            node._socket.close()
            node._socket = None

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(coroutine)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    async def end_meeting(self, node: FakeNode, meeting_id: str, recordingmarks: bool | None = None) -> None:
        """End a meeting as if everybody left (recordingmarks None: whether it recorded)."""
        await self.meeting_ended(node, node.remove_meeting(meeting_id), recordingmarks)

    async def meeting_ended(self, node: FakeNode, meeting: FakeMeeting, recordingmarks: bool | None = None) -> None:
        """BBB after a meeting ended: the end callbacks, then a recorded meeting's upload in the background."""
        recorded = self.recorder.records(meeting)
        await self.send_end_callbacks(meeting, recorded if recordingmarks is None else recordingmarks)
        if recorded:
            self.spawn(self.recorder.publish(node, meeting))

    async def settle(self) -> None:
        """Wait for every background task (end callbacks, recordings), also those they start."""
        while self._background_tasks:
            await asyncio.gather(*list(self._background_tasks), return_exceptions=True)

    async def send_end_callbacks(self, meeting: FakeMeeting, recordingmarks: bool) -> None:
        end_callback = self.recorder.reach(meeting.metadata.get("endcallbackurl", ""))
        if end_callback:
            params = [("recordingmarks", "true" if recordingmarks else "false"), ("meetingID", meeting.meeting_id)]
            await self._get_quietly(append_query(end_callback, params))
        if meeting.meeting_ended_url:
            await self._get_quietly(meeting.meeting_ended_url)

    async def _get_quietly(self, url: str) -> None:
        """Best-effort GET like BBB: the answer is not interpreted, errors are only logged."""
        if not is_loopback_url(url) or self._http_client is None:
            log.debug("fake BBB: not calling non-loopback callback %s", url)
            return
        request = HTTPRequest(url, connect_timeout=CALLBACK_TIMEOUT_SECONDS, request_timeout=CALLBACK_TIMEOUT_SECONDS)
        try:
            await self._http_client.fetch(request, raise_error=False)
        except Exception as error:  # noqa: BLE001 - best effort, like BBB
            log.debug("fake BBB: callback %s failed: %s", url, error)


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
            url = f"http://{self.node.domain}:{self.node.port}/html5client/join?sessionToken={attendee.session_token}"
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
        self.send_xml(self.node.meetings_document())

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
        ],
        default_handler_class=FakeNodeHandler,
        default_handler_args=handler_args,
        log_function=_log_nothing,
    )
    application.fleet = fleet
    return application


def _raise_open_file_limit(needed: int) -> None:
    """1,000 nodes need 1,000 listening sockets plus connections: lift the soft limit if we can."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            log.warning("fake BBB: could not raise the open file limit to %d", target)


if __name__ == "__main__":  # `python -m b3lb.testing.fakebbb` (bin/fake-fleet, the benchmarks)
    from b3lb.testing.fakebbb_cli import main

    raise SystemExit(main())
