"""Wire format of the fake BBB fleet (see b3lb.testing.fakebbb).

Holds what the fake nodes exchange on the wire: the meeting model as built from
API parameters, the BBB checksum rules (spec 1.1-1.5) and the XML documents.
Element names and order follow the BigBlueButton templates as described in
/work/shared/spec/bbb-api.md (sections 0.4 and 2.3-2.10). Documents are built
as strings with explicit escaping: it is much faster than building lxml trees,
which matters when a benchmark polls 1,000 nodes with 20 meetings each.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from xml.sax.saxutils import escape

# Characters XML 1.0 cannot carry at all, not even escaped.
_INVALID_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_NEEDS_ESCAPING = re.compile("[&<>\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# Metadata and customdata keys become element names; anything else would break the document.
_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*$")

MESSAGE_CHECKSUM_ERROR = "You did not pass the checksum security check"
MESSAGE_MEETING_NOT_FOUND = "A meeting with that ID does not exist"
MESSAGE_MISSING_MEETING_ID = "You must specify a meeting ID for the meeting."
MESSAGE_ID_NOT_UNIQUE = "A meeting already exists with that meeting ID.  Please use a different meeting ID."
MESSAGE_DUPLICATE_WARNING = "This conference was already in existence and may currently be in progress."
MESSAGE_SENT_END = (
    "A request to end the meeting was sent.  Please wait a few seconds, and then use the "
    "getMeetingInfo or isMeetingRunning API calls to verify that it was ended."
)
MESSAGE_UNSUPPORTED_CONTENT_TYPE = "POST request Content-Type is missing or unsupported"
MESSAGE_COMMA_IN_ID = "Meeting ID cannot contain ','"
MESSAGE_ID_SIZE = "Meeting ID must be between 2 and 256 characters"
MESSAGE_NAME_SIZE = "Meeting name must be between 2 and 256 characters"
MESSAGE_MAX_PARTICIPANTS = "The number of participants allowed for this meeting has been reached."
MESSAGE_CREATE_TIME_MISMATCH = "The createTime parameter submitted mismatches with the current meeting."
MESSAGE_INVALID_PASSWORD = "You must supply the moderator password for this call."
MESSAGE_FAILED_MODE = "The fake node is configured to fail every request."

# Algorithm by checksum hex length (BBB >= 2.5 accepts all four by default).
HASH_BY_HEX_LENGTH = {40: "sha1", 64: "sha256", 96: "sha384", 128: "sha512"}
# BBB strips control characters from parameter values.
_CONTROL_CHARS = {code: None for code in range(0x20)}


def wire_bytes(raw_query: str) -> bytes:
    """Bytes of a query as it was on the wire; Tornado decodes the request line as latin-1."""
    try:
        return raw_query.encode("latin-1")
    except UnicodeEncodeError:  # a str built in Python, not taken from a request line
        return raw_query.encode("utf-8")


def parse_query(raw_query: str) -> dict[str, str]:
    """Parameters of a raw query string; the first value of a repeated key wins (as in BBB)."""
    params: dict[str, str] = {}
    text = wire_bytes(raw_query).decode("utf-8", errors="replace")
    for key, value in parse_qsl(text, keep_blank_values=True):
        params.setdefault(key, value.translate(_CONTROL_CHARS))
    return params


def checksum_is_valid(call: str, raw_query: str, secret: str) -> bool:
    """BBB checksum check over the raw query string (spec 1.1-1.5)."""
    supplied = parse_query(raw_query).get("checksum", "")
    algorithm = HASH_BY_HEX_LENGTH.get(len(supplied))
    if algorithm is None or not supplied.isascii():
        return False
    # Plain string removal in BBB's order; the rest is hashed exactly as sent.
    stripped = (
        raw_query.replace("&checksum=" + supplied, "")
        .replace("checksum=" + supplied + "&", "")
        .replace("checksum=" + supplied, "")
    )
    payload = call.encode("utf-8") + wire_bytes(stripped) + secret.encode("utf-8")
    expected = hashlib.new(algorithm, payload).hexdigest()
    return hmac.compare_digest(expected, supplied.lower())


def sign_query(call: str, query: str, secret: str, algorithm: str = "sha256") -> str:
    """Append a checksum to ``query`` (convenience for tests and manual use)."""
    checksum = hashlib.new(algorithm, (call + query + secret).encode("utf-8")).hexdigest()
    return f"{query}&checksum={checksum}" if query else f"checksum={checksum}"


def is_loopback_url(url: str) -> bool:
    """Only loopback callbacks are sent: a fake fleet must never call the outside world."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https"):
            return False
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def append_query(url: str, params: list[tuple[str, str]]) -> str:
    """Append encoded parameters after any existing ones, like BBB's URI builder."""
    parts = urlsplit(url)
    extra = urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


@dataclass
class RecordedRequest:
    """One request received by a fake node, kept for assertions."""

    method: str
    call: str  # API call name ("" for the API root) or the path for other endpoints
    query: str  # raw query string as received
    body: bytes
    content_type: str
    headers: dict[str, str]
    path: str
    received_at: float = field(default_factory=time.time)


@dataclass
class FakeAttendee:
    user_id: str
    full_name: str
    role: str = "VIEWER"
    is_presenter: bool = False
    is_listening_only: bool = False
    has_joined_voice: bool = False
    has_video: bool = False
    custom_data: dict[str, str] = field(default_factory=dict)
    internal_user_id: str = field(default_factory=lambda: "w_" + secrets.token_hex(6))
    auth_token: str = field(default_factory=lambda: secrets.token_hex(6))
    session_token: str = field(default_factory=lambda: secrets.token_hex(8))


@dataclass
class FakeMeeting:
    meeting_id: str
    name: str
    attendee_pw: str = field(default_factory=lambda: secrets.token_hex(4))
    moderator_pw: str = field(default_factory=lambda: secrets.token_hex(4))
    create_time: int = field(default_factory=lambda: int(time.time() * 1000))
    voice_bridge: str = field(default_factory=lambda: str(70000 + secrets.randbelow(10000)))
    dial_number: str = "613-555-1234"
    duration: int = 0
    max_users: int = 0
    record: bool = False
    recording: bool = False
    is_breakout: bool = False
    has_user_joined: bool = False
    metadata: dict[str, str] = field(default_factory=dict)  # keys lower-cased, without "meta_"
    attendees: list[FakeAttendee] = field(default_factory=list)
    meeting_ended_url: str = ""
    create_params: dict[str, str] = field(default_factory=dict)
    chat_messages: list[tuple[str, str]] = field(default_factory=list)  # (userName, message)
    inserted_documents: list[bytes] = field(default_factory=list)
    made_by_fleet: bool = False  # populated or churned by the fleet itself, not created through the API
    _fields_cache: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def internal_meeting_id(self) -> str:
        return hashlib.sha1(self.meeting_id.encode("utf-8")).hexdigest() + "-" + str(self.create_time)

    @property
    def create_date(self) -> str:
        return time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(self.create_time / 1000))

    @property
    def running(self) -> bool:
        return bool(self.attendees)

    def xml_fields(self) -> str:
        """Cached getMeetingInfo/getMeetings children; call mark_changed() after mutating."""
        if self._fields_cache is None:
            self._fields_cache = meeting_fields(self)
        return self._fields_cache

    def mark_changed(self) -> None:
        self._fields_cache = None


def create_validation_error(meeting_id: str, name: str | None) -> bytes | None:
    if not meeting_id:
        return failed("missingParamMeetingID", MESSAGE_MISSING_MEETING_ID)
    if not 2 <= len(meeting_id) <= 256:
        return failed("sizeError", MESSAGE_ID_SIZE)
    if "," in meeting_id:
        return failed("validationError", MESSAGE_COMMA_IN_ID)
    if name is not None and not 2 <= len(name) <= 256:
        return failed("sizeError", MESSAGE_NAME_SIZE)
    return None


def passwords_match(meeting: FakeMeeting, params: dict[str, str]) -> bool:
    """BBB treats a repeated create as duplicate unless a sent password differs."""
    attendee_pw = params.get("attendeePW", "")
    moderator_pw = params.get("moderatorPW", "")
    return (not attendee_pw or attendee_pw == meeting.attendee_pw) and (
        not moderator_pw or moderator_pw == meeting.moderator_pw
    )


def int_param(params: dict[str, str], key: str) -> int:
    try:
        return max(0, int(params.get(key, "0")))
    except ValueError:
        return 0


def meeting_from_params(params: dict[str, str]) -> FakeMeeting:
    meeting_id = params["meetingID"]
    metadata: dict[str, str] = {}
    for key, value in params.items():
        if key.lower().startswith("meta_"):
            metadata.setdefault(key[5:].lower(), value)  # BBB lower-cases metadata keys
    optional = {
        field_name: params[key]
        for key, field_name in (
            ("attendeePW", "attendee_pw"),
            ("moderatorPW", "moderator_pw"),
            ("voiceBridge", "voice_bridge"),
            ("dialNumber", "dial_number"),
        )
        if params.get(key)
    }
    return FakeMeeting(
        meeting_id=meeting_id,
        name=params.get("name") or meeting_id,
        duration=int_param(params, "duration"),
        max_users=int_param(params, "maxParticipants"),
        record=params.get("record", "").lower() == "true",
        metadata=metadata,
        meeting_ended_url=params.get("meetingEndedURL", ""),
        create_params=dict(params),
        **optional,
    )


def attendee_from_params(meeting: FakeMeeting, params: dict[str, str]) -> FakeAttendee:
    role = params.get("role", "").upper()
    if role not in ("MODERATOR", "VIEWER"):  # deprecated password-based role
        password = params.get("password", "")
        role = "MODERATOR" if password and password == meeting.moderator_pw else "VIEWER"
    # userdata-* parameters show up as <customdata> children, without the prefix.
    custom_data = {key[9:]: value for key, value in params.items() if key.startswith("userdata-")}
    attendee = FakeAttendee(params.get("userID", ""), params["fullName"], role, custom_data=custom_data)
    if not attendee.user_id:
        attendee.user_id = attendee.internal_user_id
    return attendee


def xml_text(value: object) -> str:
    """Escape a value for element content; drop characters XML cannot represent."""
    text = value if isinstance(value, str) else str(value)
    if _NEEDS_ESCAPING.search(text) is None:  # fast path: most values are plain
        return text
    return escape(_INVALID_XML_CHARS.sub("", text))


def is_xml_name(name: str) -> bool:
    return bool(_XML_NAME.match(name))


def element(name: str, value: object) -> str:
    return f"<{name}>{xml_text(value)}</{name}>"


def xml_bool(flag: bool) -> str:
    return "true" if flag else "false"


def response(*parts: str) -> bytes:
    return ("<response>" + "".join(parts) + "</response>").encode("utf-8")


def failed(message_key: str | None, message: str) -> bytes:
    """The single-error FAILED document; some BBB failures carry no messageKey."""
    key_part = element("messageKey", message_key) if message_key is not None else ""
    return response(element("returncode", "FAILED"), key_part, element("message", message))


CHECKSUM_ERROR = failed("checksumError", MESSAGE_CHECKSUM_ERROR)
FAILED_MODE = failed("internalError", MESSAGE_FAILED_MODE)

# Exact empty getMeetings document of spec 2.8 (line breaks included).
NO_MEETINGS = (
    b"<response>\n<returncode>SUCCESS</returncode>\n<meetings/>\n"
    b"<messageKey>noMeetings</messageKey>\n<message>no meetings were found on this server</message>\n"
    b"</response>"
)

VERSION = response(
    element("returncode", "SUCCESS"),
    element("version", "2.0"),
    element("apiVersion", "2.0"),
    element("bbbVersion", "3.0.0"),
)

END_SUCCESS = response(
    element("returncode", "SUCCESS"),
    element("messageKey", "sentEndMeetingRequest"),
    element("message", MESSAGE_SENT_END),
)

INSERT_DOCUMENT_SUCCESS = response(
    element("returncode", "SUCCESS"), element("message", "Presentation is being uploaded")
)

CHAT_SUCCESS = response(element("returncode", "SUCCESS"), "<messageKey></messageKey><message></message>")


def running(is_running: bool) -> bytes:
    return response(element("returncode", "SUCCESS"), element("running", xml_bool(is_running)))


def create_success(meeting: FakeMeeting, duplicate: bool) -> bytes:
    if duplicate:
        message_part = element("messageKey", "duplicateWarning") + element("message", MESSAGE_DUPLICATE_WARNING)
    else:
        message_part = "<messageKey></messageKey><message></message>"
    return response(
        element("returncode", "SUCCESS"),
        element("meetingID", meeting.meeting_id),
        element("internalMeetingID", meeting.internal_meeting_id),
        element("parentMeetingID", "bbb-none"),
        element("attendeePW", meeting.attendee_pw),
        element("moderatorPW", meeting.moderator_pw),
        element("createTime", meeting.create_time),
        element("voiceBridge", meeting.voice_bridge),
        element("dialNumber", meeting.dial_number),
        element("createDate", meeting.create_date),
        element("hasUserJoined", xml_bool(meeting.has_user_joined)),
        element("duration", meeting.duration),
        element("hasBeenForciblyEnded", "false"),
        message_part,
    )


def join_success(meeting: FakeMeeting, attendee: FakeAttendee, url: str) -> bytes:
    return response(
        element("returncode", "SUCCESS"),
        element("messageKey", "successfullyJoined"),
        element("message", "You have joined successfully."),
        element("meeting_id", meeting.internal_meeting_id),
        element("user_id", attendee.internal_user_id),
        element("auth_token", attendee.auth_token),
        element("session_token", attendee.session_token),
        element("guestStatus", "ALLOW"),
        element("url", url),
    )


def _key_value_children(values: dict[str, str]) -> str:
    return "".join(element(key, value) for key, value in values.items() if is_xml_name(key))


def attendee_element(attendee: FakeAttendee) -> str:
    # One f-string with escaping only for the free-text fields: the hot path of a first poll.
    custom = ""
    if attendee.custom_data:
        custom = "<customdata>" + _key_value_children(attendee.custom_data) + "</customdata>"
    return (
        f"<attendee><userID>{xml_text(attendee.user_id)}</userID>"
        f"<fullName>{xml_text(attendee.full_name)}</fullName><role>{xml_text(attendee.role)}</role>"
        f"<isPresenter>{xml_bool(attendee.is_presenter)}</isPresenter>"
        f"<isListeningOnly>{xml_bool(attendee.is_listening_only)}</isListeningOnly>"
        f"<hasJoinedVoice>{xml_bool(attendee.has_joined_voice)}</hasJoinedVoice>"
        f"<hasVideo>{xml_bool(attendee.has_video)}</hasVideo><clientType>HTML5</clientType>{custom}</attendee>"
    )


def meeting_fields(meeting: FakeMeeting) -> str:
    """Children shared by getMeetingInfo and each getMeetings <meeting>, in BBB order."""
    # One f-string with escaping only for free-text values: rebuilt for every changed meeting of
    # a churning 1,000-node fleet, so it is the fleet's hot path.
    attendees = meeting.attendees
    listeners = voice = videos = moderators = 0
    for attendee in attendees:
        listeners += attendee.is_listening_only
        voice += attendee.has_joined_voice
        videos += attendee.has_video
        moderators += attendee.role == "MODERATOR"
    create_time = meeting.create_time
    return (
        f"<meetingName>{xml_text(meeting.name)}</meetingName><meetingID>{xml_text(meeting.meeting_id)}</meetingID>"
        f"<internalMeetingID>{xml_text(meeting.internal_meeting_id)}</internalMeetingID>"
        f"<createTime>{create_time}</createTime><createDate>{meeting.create_date}</createDate>"
        f"<voiceBridge>{xml_text(meeting.voice_bridge)}</voiceBridge>"
        f"<dialNumber>{xml_text(meeting.dial_number)}</dialNumber>"
        f"<attendeePW>{xml_text(meeting.attendee_pw)}</attendeePW>"
        f"<moderatorPW>{xml_text(meeting.moderator_pw)}</moderatorPW>"
        f"<running>{xml_bool(bool(attendees))}</running><duration>{meeting.duration}</duration>"
        f"<hasUserJoined>{xml_bool(meeting.has_user_joined)}</hasUserJoined>"
        f"<recording>{xml_bool(meeting.recording)}</recording><hasBeenForciblyEnded>false</hasBeenForciblyEnded>"
        f"<startTime>{create_time}</startTime><endTime>0</endTime>"
        f"<participantCount>{len(attendees)}</participantCount><listenerCount>{listeners}</listenerCount>"
        f"<voiceParticipantCount>{voice}</voiceParticipantCount><videoCount>{videos}</videoCount>"
        f"<maxUsers>{meeting.max_users}</maxUsers><moderatorCount>{moderators}</moderatorCount>"
        f"<attendees>{''.join(attendee_element(a) for a in attendees)}</attendees>"
        f"<metadata>{_key_value_children(meeting.metadata)}</metadata>"
        f"<isBreakout>{xml_bool(meeting.is_breakout)}</isBreakout>"
    )


def meeting_info(fields: str) -> bytes:
    return response(element("returncode", "SUCCESS"), fields)


def meetings_list(all_fields: Iterable[str]) -> bytes:
    meetings = "".join("<meeting>" + fields + "</meeting>" for fields in all_fields)
    return response(element("returncode", "SUCCESS"), "<meetings>" + meetings + "</meetings>")
