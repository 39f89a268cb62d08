"""Fleet-wide modes of the fake BBB fleet: TLS, gzip and chunked answers, and a fleet that changes.

- TLS (`FleetCertificates`): a trustme CA (its certificate in DIR/ca.pem, for b3lb's
  `api.node_ca_file`) and one certificate per node address, as every real node has its own. Clients
  connect by IP address and send no SNI, so the fleet picks the certificate by the listening socket a
  connection arrived on.
- gzip: answers are gzip-encoded (level 1, nginx's default `gzip_comp_level`) when the request
  accepts gzip; chunked: answers carry `Transfer-Encoding: chunked` instead of `Content-Length`.
  The fast path (b3lb.testing.fakebbb_fast) writes them with `write_answer`, the handlers through
  the `encoding_transform` output transform, so both paths answer alike.
- churn (`Churn`): before each getMeetings answer a node changes a fraction of its meetings
  (an attendee joins or leaves) and ends a tenth of that fraction of the meetings the fleet made
  itself (`FakeMeeting.made_by_fleet`), starting as many new ones under fresh IDs. Meetings created
  through the API (b3lb's) are never ended by churn; only their attendee counts change.
"""

from __future__ import annotations

import random
import ssl
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from tornado.httputil import HTTPConnection, HTTPHeaders, HTTPServerRequest, ResponseStartLine
from tornado.iostream import StreamClosedError
from tornado.web import OutputTransform

from b3lb.testing.fakebbb_xml import FakeAttendee, FakeMeeting

if TYPE_CHECKING:
    from b3lb.testing.fakebbb import FakeFleet, FakeNode

GZIP_LEVEL = 1
# Chunked answers are written in pieces of this size, so a client sees several chunks per document.
CHUNK_BYTES = 16 * 1024
# Spreads nodes' churn credits over [0, 1): not every node ends a meeting in the same cycle.
GOLDEN = 0.6180339887498949


class FleetCertificates:
    """A test CA (written to `folder`/ca.pem) and a server context per node address."""

    def __init__(self, folder: str | Path) -> None:
        try:
            import trustme
        except ImportError as exc:  # pragma: no cover - trustme is in the dev extra
            raise RuntimeError("TLS nodes need trustme (pip install trustme, or the dev extra)") from exc
        self.ca = trustme.CA(organization_name="b3lb fake fleet")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._contexts: dict[str, ssl.SSLContext] = {}

    def server_context(self, address: str) -> ssl.SSLContext:
        """The context serving `address` (its certificate is issued on first use: ~2 ms)."""
        context = self._contexts.get(address)
        if context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ca.issue_cert(address).configure_cert(context)
            self._contexts[address] = context
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts the fleet's CA (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding value allows gzip (listed and not with q=0)."""
    for part in accept_encoding.lower().split(","):
        coding, _, parameters = part.partition(";")
        if coding.strip() in ("gzip", "x-gzip"):
            quality = parameters.replace(" ", "")
            if not quality.startswith("q="):
                return True
            try:
                return float(quality[2:]) > 0
            except ValueError:
                return False
    return False


def gzipped(body: bytes) -> bytes:
    return zlib.compress(body, GZIP_LEVEL, wbits=31)  # wbits 31: gzip header and trailer


def write_answer(
    connection: HTTPConnection, node: FakeNode, content_type: str, body: bytes, *, gzip: bool, chunked: bool
) -> None:
    """A 200 answer written straight to the connection (the fast path), in the fleet's encoding."""
    headers = HTTPHeaders({"Content-Type": content_type})
    if gzip:
        body = node.gzipped(body)
        headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
    if not chunked:
        headers["Content-Length"] = str(len(body))
    try:
        # Without Content-Length, Tornado's HTTP/1.1 connection chunks every write.
        first = body[:CHUNK_BYTES] if chunked else body
        connection.write_headers(ResponseStartLine("HTTP/1.1", 200, "OK"), headers, first)
        if chunked:
            for start in range(CHUNK_BYTES, len(body), CHUNK_BYTES):
                connection.write(body[start : start + CHUNK_BYTES])
        connection.finish()
    except StreamClosedError:
        pass


def encoding_transform(fleet: FakeFleet) -> type[OutputTransform]:
    """The handlers' OutputTransform applying the fleet's gzip and chunked modes."""

    class FleetEncoding(OutputTransform):
        def __init__(self, request: HTTPServerRequest) -> None:
            self.gzip = fleet.gzip and accepts_gzip(request.headers.get("Accept-Encoding", ""))
            self.compressor: zlib._Compress | None = None

        def transform_first_chunk(
            self, status_code: int, headers: HTTPHeaders, chunk: bytes, finishing: bool
        ) -> tuple[int, HTTPHeaders, bytes]:
            # Nothing to encode in an empty final answer (a redirect, a 204)
            if self.gzip and (chunk or not finishing) and "Content-Encoding" not in headers:
                headers["Content-Encoding"] = "gzip"
                headers.add("Vary", "Accept-Encoding")
                self.compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
                chunk = self.transform_chunk(chunk, finishing)
                if "Content-Length" in headers:
                    headers["Content-Length"] = str(len(chunk))
            if fleet.chunked or (self.compressor is not None and not finishing):
                headers.pop("Content-Length", None)  # HTTP/1.1 then chunks the answer
            return status_code, headers, chunk

        def transform_chunk(self, chunk: bytes, finishing: bool) -> bytes:
            if self.compressor is None:
                return chunk
            flush_mode = zlib.Z_FINISH if finishing else zlib.Z_SYNC_FLUSH
            return self.compressor.compress(chunk) + self.compressor.flush(flush_mode)

    return FleetEncoding


class Churn:
    """Changes a node's meetings before each getMeetings answer, as a live node's list changes between polls."""

    def __init__(self, fraction: float, seed: int = 12) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"churn fraction must be between 0 and 1, not {fraction!r}")
        self.fraction = fraction
        self.rng = random.Random(seed)  # the same changes in every run
        self.serial = 0  # for fresh meeting and attendee IDs
        self.changed = 0  # totals, for tests and the fleet's log
        self.ended = 0

    @staticmethod
    def initial_credit(index: int) -> float:
        return (index * GOLDEN) % 1.0

    def apply(self, node: FakeNode) -> None:
        meetings = node.meetings
        if not meetings or self.fraction <= 0.0:
            return
        own = [meeting for meeting in meetings.values() if meeting.made_by_fleet]
        node.end_credit += self.fraction / 10 * len(own)
        while node.end_credit >= 1.0 and own:
            node.end_credit -= 1.0
            ended = own.pop(self.rng.randrange(len(own)))
            node.remove_meeting(ended.meeting_id)
            self._start_meeting(node, len(ended.attendees))
        node.change_credit += self.fraction * len(meetings)
        count = min(int(node.change_credit), len(meetings))
        node.change_credit -= count
        for meeting in self.rng.sample(list(meetings.values()), count):
            self._shift_attendees(node, meeting)

    def _start_meeting(self, node: FakeNode, attendees: int) -> None:
        self.serial += 1
        self.ended += 1
        meeting_id = f"m-{node.name}-c{self.serial:07d}"
        node.add_meeting(FakeMeeting(meeting_id=meeting_id, name=f"Meeting c{self.serial}", made_by_fleet=True))
        if attendees > 0:
            node.add_attendees(meeting_id, attendees)

    def _shift_attendees(self, node: FakeNode, meeting: FakeMeeting) -> None:
        """One attendee leaves (if more than one is left) or a new one joins."""
        self.changed += 1
        if len(meeting.attendees) > 1 and self.rng.random() < 0.5:
            node.remove_attendee(meeting.meeting_id, self.rng.randrange(len(meeting.attendees)))
            return
        self.serial += 1
        user_id = f"{node.name}-churn-{self.serial}"
        node.add_attendee(
            meeting.meeting_id,
            FakeAttendee(user_id, f"Attendee {self.serial}", internal_user_id="w_" + user_id,
                         auth_token=user_id, session_token=user_id),
        )
