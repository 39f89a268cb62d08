"""A fake fleet of BigBlueButton nodes for tests and benchmarks.

Every node gets its own loopback address (127.0.X.Y) and all nodes share one TCP
port, so node domains are unique (the database requires that) while 1,000 nodes
cost one listening socket each and a single Tornado ``HTTPServer``. A request is
routed to its node by the address part of the ``Host`` header, falling back to
the local address of the socket it arrived on.

Wire behaviour follows /work/shared/spec/bbb-api.md: checksum rules (1.1-1.5),
the API calls the load balancer uses (2.3-2.10), the end callback (3.1) and the
B3LB load endpoint (4.11).

Fleet-wide modes (TLS nodes, gzip and chunked answers, a changing fleet, `POST /fleet/end-all`) are
described in b3lb.testing.fakebbb_modes; the handlers live in b3lb.testing.fakebbb_handlers.

Run ``python -m b3lb.testing.fakebbb --nodes 10`` for a standalone fleet (``--help`` for the modes).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import secrets
import socket
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Self

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, SSLIOStream
from tornado.netutil import add_accept_handler, bind_sockets

from b3lb.testing import fakebbb_xml as bbb_xml
from b3lb.testing.fakebbb_handlers import make_application
from b3lb.testing.fakebbb_modes import Churn, FleetCertificates, gzipped
from b3lb.testing.fakebbb_xml import (
    FakeAttendee,
    FakeMeeting,
    RecordedRequest,
    append_query,
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
CALLBACK_TIMEOUT_SECONDS = 3.0


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
        self._gzipped: tuple[bytes, bytes] | None = None  # (document, its gzip encoding)
        # Churn's fractional carry-overs (b3lb.testing.fakebbb_modes.Churn), staggered per node.
        self.change_credit = self.end_credit = Churn.initial_credit(index)

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
    def scheme(self) -> str:
        return "https" if self._fleet.tls is not None else "http"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.domain}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/bigbluebutton/api/"

    @property
    def load_url(self) -> str:
        return f"{self.base_url}/b3lb/load"

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

    def get_meetings_document(self) -> bytes:
        """The answer to a getMeetings call: the fleet's churn first changes the meetings."""
        if self._fleet.churn is not None:
            self._fleet.churn.apply(self)
        return self.meetings_document()

    def gzipped(self, body: bytes) -> bytes:
        """`body` gzip-encoded; the getMeetings document's encoding is kept until it changes."""
        if body is not self._meetings_document:
            return gzipped(body)
        if self._gzipped is None or self._gzipped[0] is not body:
            self._gzipped = (body, gzipped(body))
        return self._gzipped[1]

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

    def remove_attendee(self, meeting_id: str, index: int = -1) -> FakeAttendee:
        meeting = self.meetings[meeting_id]
        attendee = meeting.attendees.pop(index)
        meeting.mark_changed()
        self._meetings_document = None
        return attendee

    def end_all(self) -> int:
        """Every meeting gone at once (no end callbacks); returns how many there were."""
        count = len(self.meetings)
        self.meetings.clear()
        self._meetings_document = self._gzipped = None
        return count

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
            self.add_meeting(FakeMeeting(meeting_id=meeting_id, name=f"Meeting {number}", made_by_fleet=True))
            self.add_attendees(meeting_id, attendees_each)

    def record(self, request: RecordedRequest) -> None:
        if self._fleet.record_requests:
            self.requests.append(request)


class FakeFleet:
    """Many fake BBB nodes served by one Tornado HTTPServer on one shared port."""

    def __init__(self, count: int = 1, *, secret: str | None = None, port: int = 0, record_requests: bool = True,
                 recordings: bool = False, tls_dir: str | Path | None = None, chunked: bool = False,
                 gzip: bool = False, churn: float = 0.0) -> None:
        """`tls_dir`: serve https with a test CA written to tls_dir/ca.pem; `chunked`, `gzip`: how answers
        are encoded; `churn`: fraction of a node's meetings changed before each getMeetings (see
        b3lb.testing.fakebbb_modes)."""
        self.tls = FleetCertificates(tls_dir) if tls_dir is not None else None
        self.chunked = chunked
        self.gzip = gzip
        self.churn = Churn(churn) if churn > 0 else None
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

    @property
    def ca_file(self) -> Path | None:
        """The test CA's certificate (PEM) when the fleet serves TLS."""
        return self.tls.ca_file if self.tls is not None else None

    def client_ssl_context(self) -> ssl.SSLContext | None:
        """A verifying client context trusting the fleet's CA (None without TLS)."""
        return self.tls.client_context() if self.tls is not None else None

    def end_all(self) -> int:
        """End every meeting on every node (`POST /fleet/end-all`); returns how many ended."""
        return sum(node.end_all() for node in self.nodes)

    def node_by_domain(self, domain: str) -> FakeNode:
        return self._nodes_by_domain[domain]

    def find_node(self, domain: str) -> FakeNode | None:
        return self._nodes_by_domain.get(domain)

    async def start(self) -> None:
        self._server = HTTPServer(make_application(self), max_header_size=64 * 1024, idle_connection_timeout=60)
        self._http_client = AsyncHTTPClient(force_instance=True, max_clients=50)
        _raise_open_file_limit(len(self.nodes) + 1024)
        if self.tls is not None:  # every certificate now, not while the first poll waits
            for node in self.nodes:
                self.tls.server_context(node.domain)
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
        node._remove_accept_handler = add_accept_handler(
            node._socket, lambda connection, address: self._accept_connection(node, connection, address)
        )

    def _accept_connection(self, node: FakeNode, connection: socket.socket, address: Any) -> None:
        # Our own accept handlers (instead of add_sockets) let one node's socket be closed alone,
        # and tell which node's certificate a TLS connection gets.
        if self._server is None:
            connection.close()
            return
        if self.tls is None:
            self._server.handle_stream(IOStream(connection), address)
            return
        try:
            wrapped = self.tls.server_context(node.domain).wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        except (ssl.SSLError, OSError):  # closed at once (a port scan): nothing to serve
            connection.close()
            return
        self._server.handle_stream(SSLIOStream(wrapped), address)

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
