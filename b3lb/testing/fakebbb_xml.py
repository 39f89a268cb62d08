"""XML documents served by the fake BBB fleet (see b3lb.testing.fakebbb).

Element names and order follow the BigBlueButton templates as described in
/work/shared/spec/bbb-api.md (sections 0.4 and 2.3-2.10). Documents are built
as strings with explicit escaping: it is much faster than building lxml trees,
which matters when a benchmark polls 1,000 nodes with 20 meetings each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

if TYPE_CHECKING:
    from b3lb.testing.fakebbb import FakeAttendee, FakeMeeting

# Characters XML 1.0 cannot carry at all, not even escaped.
_INVALID_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
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


def xml_text(value: object) -> str:
    """Escape a value for element content; drop characters XML cannot represent."""
    return escape(_INVALID_XML_CHARS.sub("", str(value)))


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
    custom = ""
    if attendee.custom_data:
        custom = "<customdata>" + _key_value_children(attendee.custom_data) + "</customdata>"
    return (
        "<attendee>"
        + element("userID", attendee.user_id)
        + element("fullName", attendee.full_name)
        + element("role", attendee.role)
        + element("isPresenter", xml_bool(attendee.is_presenter))
        + element("isListeningOnly", xml_bool(attendee.is_listening_only))
        + element("hasJoinedVoice", xml_bool(attendee.has_joined_voice))
        + element("hasVideo", xml_bool(attendee.has_video))
        + element("clientType", "HTML5")
        + custom
        + "</attendee>"
    )


def meeting_fields(meeting: FakeMeeting) -> str:
    """Children shared by getMeetingInfo and each getMeetings <meeting>, in BBB order."""
    attendees = meeting.attendees
    return "".join(
        (
            element("meetingName", meeting.name),
            element("meetingID", meeting.meeting_id),
            element("internalMeetingID", meeting.internal_meeting_id),
            element("createTime", meeting.create_time),
            element("createDate", meeting.create_date),
            element("voiceBridge", meeting.voice_bridge),
            element("dialNumber", meeting.dial_number),
            element("attendeePW", meeting.attendee_pw),
            element("moderatorPW", meeting.moderator_pw),
            element("running", xml_bool(bool(attendees))),
            element("duration", meeting.duration),
            element("hasUserJoined", xml_bool(meeting.has_user_joined)),
            element("recording", xml_bool(meeting.recording)),
            element("hasBeenForciblyEnded", "false"),
            element("startTime", meeting.create_time),
            element("endTime", 0),
            element("participantCount", len(attendees)),
            element("listenerCount", sum(1 for a in attendees if a.is_listening_only)),
            element("voiceParticipantCount", sum(1 for a in attendees if a.has_joined_voice)),
            element("videoCount", sum(1 for a in attendees if a.has_video)),
            element("maxUsers", meeting.max_users),
            element("moderatorCount", sum(1 for a in attendees if a.role == "MODERATOR")),
            "<attendees>" + "".join(attendee_element(a) for a in attendees) + "</attendees>",
            "<metadata>" + _key_value_children(meeting.metadata) + "</metadata>",
            element("isBreakout", xml_bool(meeting.is_breakout)),
        )
    )


def meeting_info(fields: str) -> bytes:
    return response(element("returncode", "SUCCESS"), fields)


def meetings_list(all_fields: Iterable[str]) -> bytes:
    meetings = "".join("<meeting>" + fields + "</meeting>" for fields in all_fields)
    return response(element("returncode", "SUCCESS"), "<meetings>" + meetings + "</meetings>")
