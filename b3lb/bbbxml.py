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
_CLOSE_LEN = len(CLOSE)
_ID_OPEN, _ID_CLOSE = _TAGS["meetingID"]
_ID_OPEN_LEN = len(_ID_OPEN)
_BREAKOUT_OPEN = _TAGS["isBreakout"][0]
_BREAKOUT_OPEN_LEN = len(_BREAKOUT_OPEN)
_COUNT_OPEN, _COUNT_CLOSE = _TAGS["participantCount"]
_COUNT_OPEN_LEN = len(_COUNT_OPEN)
_META = {name: (f"<{name}>".encode(), f"</{name}>".encode()) for name in ("bbb-origin", "bbb-origin-server-name")}


@dataclass(slots=True)
class ScannedMeeting:
    meeting_id: str
    is_breakout: bool
    participants: int
    body: bytes  # the whole document: a slice is only made for the meetings b3lb routes
    start: int
    end: int

    @property
    def xml(self) -> bytes:
        """The node's own <meeting> element, byte for byte."""
        return self.body[self.start : self.end]

    def same_as(self, xml: bytes | None) -> bool:
        """Whether the element is exactly `xml`, compared in place (no copy of it is made)."""
        return xml is not None and len(xml) == self.end - self.start and self.body.startswith(xml, self.start)


def _text(chunk: bytes, tags: tuple[bytes, bytes]) -> bytes | None:
    """The text of the first element with these tags."""
    opened = chunk.find(tags[0])
    if opened < 0:
        return None
    opened += len(tags[0])
    closed = chunk.find(tags[1], opened)
    return chunk[opened:closed] if closed >= 0 else None


def _int(raw: bytes | None) -> int:
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
    if b"<![CDATA[" in body:
        return None
    # The loop is written out (no helper calls): it runs for every meeting of every node each cycle.
    find, rfind = body.find, body.rfind
    meetings: list[ScannedMeeting] = []
    position = find(OPEN)
    while position >= 0:
        end = find(CLOSE, position)
        if end < 0:
            return None
        end += _CLOSE_LEN
        id_start = find(_ID_OPEN, position, end)
        id_end = find(_ID_CLOSE, id_start, end) if id_start >= 0 else -1
        if id_end < 0:
            return None
        raw_id = body[id_start + _ID_OPEN_LEN : id_end]
        # isBreakout follows the attendees, whose customdata may use any name: the meeting's own is the last
        flag = rfind(_BREAKOUT_OPEN, position, end)
        is_breakout = flag >= 0 and body.startswith(b"true</isBreakout>", flag + _BREAKOUT_OPEN_LEN)
        participants = 0
        count_start = find(_COUNT_OPEN, position, end)
        if count_start >= 0:
            count_start += _COUNT_OPEN_LEN
            try:
                participants = int(body[count_start : find(_COUNT_CLOSE, count_start, end)])
            except ValueError:
                pass
        meetings.append(ScannedMeeting(_str(raw_id), is_breakout, participants, body, position, end))
        position = find(OPEN, end)
    # Every <meeting> and </meeting> must be one found above: a nested element, an element with
    # attributes or a stray tag means this is not the template, and lxml reads it instead.
    if body.count(OPEN) != len(meetings) or body.count(CLOSE) != len(meetings):
        return None
    return meetings


def details(xml: bytes) -> tuple[tuple[int, int, int, int, int], str, str]:
    """Counts (participants, listeners, voice, video, moderators) and the origin metadata."""
    counts = tuple(_int(_text(xml, _TAGS[name])) for name in _FIELDS)
    start = xml.rfind(b"<metadata>")
    metadata = xml[start : xml.find(b"</metadata>", start)] if start >= 0 else b""
    origin = _str(_text(metadata, _META["bbb-origin"]))
    server = _str(_text(metadata, _META["bbb-origin-server-name"]))
    return counts, origin, server  # type: ignore[return-value]
