"""Reading a node's getMeetings document quickly.

A poll cycle over 1,000 nodes reads some 50 MB of XML, and building an lxml tree of all of it
was the largest cost of the cycle. BBB writes this document from a fixed template, so the
meetings are cut out of the bytes directly: each `<meeting>...</meeting>` slice is kept verbatim
(what getMeetings serves) and only the few fields b3lb needs are read from it. Anything that
does not look like BBB's template (CDATA, attributes, unbalanced tags) makes `scan` return None
and the caller parses the document with lxml instead.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

OPEN, CLOSE = b"<meeting>", b"</meeting>"
_FIELDS = ("participantCount", "listenerCount", "voiceParticipantCount", "videoCount", "moderatorCount")
_TAGS = {name: (f"<{name}>".encode(), f"</{name}>".encode()) for name in ("meetingID", "isBreakout", *_FIELDS)}
_META = {name: (f"<{name}>".encode(), f"</{name}>".encode()) for name in ("bbb-origin", "bbb-origin-server-name")}


@dataclass(slots=True)
class ScannedMeeting:
    meeting_id: str
    is_breakout: bool
    participants: int
    xml: bytes  # the node's own <meeting> element, byte for byte


def _text(chunk: bytes, tags: tuple[bytes, bytes], *, last: bool = False) -> bytes | None:
    """The text of the first (or last) element with these tags."""
    start = chunk.rfind(tags[0]) if last else chunk.find(tags[0])
    if start < 0:
        return None
    start += len(tags[0])
    end = chunk.find(tags[1], start)
    return chunk[start:end] if end >= 0 else None


def _int(chunk: bytes, name: str) -> int:
    raw = _text(chunk, _TAGS[name])
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0


def _str(raw: bytes | None) -> str:
    if raw is None:
        return ""
    text = raw.decode("utf-8", errors="replace")
    return html.unescape(text) if "&" in text else text


def scan(body: bytes) -> list[ScannedMeeting] | None:
    """The meetings of a SUCCESS document, or None when the bytes are not plainly BBB's template.

    Raises ValueError for a document that is not a SUCCESS answer at all.
    """
    head_end = body.find(b"<meetings")
    head = body if head_end < 0 else body[:head_end]
    if b"<returncode>SUCCESS</returncode>" not in head or not body.rstrip().endswith(b"</response>"):
        raise ValueError("not a SUCCESS getMeetings document")
    if b"<![CDATA[" in body or b"<meeting " in body or body.count(OPEN) != body.count(CLOSE):
        return None
    meetings: list[ScannedMeeting] = []
    position = body.find(OPEN)
    while position >= 0:
        end = body.find(CLOSE, position)
        chunk = body[position : end + len(CLOSE)]
        if chunk.find(OPEN, 1) >= 0:  # nested <meeting>: not the template we know
            return None
        meeting_id = _text(chunk, _TAGS["meetingID"])
        if meeting_id is None:
            return None
        meetings.append(
            # isBreakout and metadata follow the attendees, whose customdata may use any name:
            # the meeting's own are the last ones
            ScannedMeeting(_str(meeting_id), _text(chunk, _TAGS["isBreakout"], last=True) == b"true",
                           _int(chunk, "participantCount"), chunk)
        )
        position = body.find(OPEN, end)
    return meetings


def details(xml: bytes) -> tuple[tuple[int, int, int, int, int], str, str]:
    """Counts (participants, listeners, voice, video, moderators) and the origin metadata."""
    counts = tuple(_int(xml, name) for name in _FIELDS)
    start = xml.rfind(b"<metadata>")
    metadata = xml[start : xml.find(b"</metadata>", start)] if start >= 0 else b""
    origin = _str(_text(metadata, _META["bbb-origin"]))
    server = _str(_text(metadata, _META["bbb-origin-server-name"]))
    return counts, origin, server  # type: ignore[return-value]
