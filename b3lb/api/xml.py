"""The XML documents b3lb answers itself, and the small result type every API call returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.sax.saxutils import escape

XML_TYPE = "text/xml;charset=utf-8"


@dataclass(slots=True)
class ApiResult:
    body: bytes
    status: int = 200
    content_type: str = XML_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def document(*elements: tuple[str, str]) -> bytes:
    """`<response>` with the given (tag, text) children in order; text is escaped."""
    inner = "".join(f"<{tag}>{escape(text)}</{tag}>" for tag, text in elements)
    return f"<response>{inner}</response>".encode()


def failed(message_key: str | None, message: str) -> ApiResult:
    elements = [("returncode", "FAILED")]
    if message_key:
        elements.append(("messageKey", message_key))
    elements.append(("message", message))
    return ApiResult(document(*elements))


CHECKSUM_ERROR = failed("checksumError", "You did not pass the checksum security check")
MISSING_MEETING_ID = failed("missingParamMeetingID", "You must specify a meeting ID for the meeting.")
MEETING_NOT_FOUND = failed("notFound", "A meeting with that ID does not exist")
INVALID_MEETING = failed("invalidMeetingIdentifier", "A meeting with that ID does not exist")
UNSUPPORTED = failed("unsupportedRequest", "This request is not supported.")
MEETING_ID_SIZE = failed(None, "Meeting id must be between 2 and 100 characters")
NAME_SIZE = failed("sizeError", "Meeting name must be between 2 and 256 characters")
NOT_RUNNING = ApiResult(document(("returncode", "SUCCESS"), ("running", "false")))
VERSION = ApiResult(
    b"<response><returncode>SUCCESS</returncode><version>2.0</version>"
    b"<apiVersion>2.0</apiVersion><bbbVersion/></response>"
)
NO_MEETINGS = ApiResult(
    b"<response><returncode>SUCCESS</returncode><meetings/><messageKey>noMeetings</messageKey>"
    b"<message>no meetings were found on this server</message></response>"
)


# Built once: a create makes its "no node" answer the default before it places the meeting.
_NO_NODE = {True: failed("noNodeAvailable", "No Node available."), False: failed(None, "No Node available.")}
_LIMIT_REACHED = {
    True: failed("limitReached", "Meeting/Attendee limit reached."),
    False: failed(None, "Meeting/Attendee limit reached."),
}


def no_node(with_key: bool) -> ApiResult:
    return _NO_NODE[bool(with_key)]


def limit_reached(with_key: bool) -> ApiResult:
    return _LIMIT_REACHED[bool(with_key)]
