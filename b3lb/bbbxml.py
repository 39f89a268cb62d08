"""Reading a node's getMeetings document quickly.

A poll cycle over 1,000 nodes reads some 50 MB of XML, and building an lxml tree of all of it
was the largest cost of the cycle. BBB writes this document from a fixed template, so the
meetings are cut out of the bytes directly: each `<meeting>...</meeting>` slice is kept verbatim
(what getMeetings serves) and only the few fields b3lb needs are read from it. Anything that
does not look like BBB's template (CDATA, attributes, unbalanced tags) makes `scan` return None
and the caller parses the document with lxml instead.

b3lb's own metadata (`b3lb-recordset`, and `endcallbackurl`, which b3lb points at itself) carries
the meeting's nonce, an upload and end-callback credential: it is cut out of each element here,
once per changed element, so what getMeetings serves never shows it.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import blake2b
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lxml import etree

OPEN, CLOSE = b"<meeting>", b"</meeting>"
DIGEST_SIZE = 16  # bytes of an element's digest: a collision would only delay one element's update
_FIELDS = ("participantCount", "listenerCount", "voiceParticipantCount", "videoCount", "moderatorCount")
_TAGS = {name: (f"<{name}>".encode(), f"</{name}>".encode()) for name in ("meetingID", "isBreakout", *_FIELDS)}
_CLOSE_LEN = len(CLOSE)
_ID_OPEN, _ID_CLOSE = _TAGS["meetingID"]
_ID_OPEN_LEN = len(_ID_OPEN)
_BREAKOUT_OPEN = _TAGS["isBreakout"][0]
_BREAKOUT_OPEN_LEN = len(_BREAKOUT_OPEN)
_COUNT_OPEN, _COUNT_CLOSE = _TAGS["participantCount"]
_COUNT_OPEN_LEN = len(_COUNT_OPEN)
# Metadata b3lb adds to every create, never shown to the tenant (BBB lower-cases the keys).
PRIVATE_KEYS = ("b3lb-recordset", "endcallbackurl")
_PRIVATE = tuple((f"<{key}>".encode(), f"</{key}>".encode()) for key in PRIVATE_KEYS)
_META_OPEN, _META_CLOSE = b"<metadata>", b"</metadata>"
_META = {name: (f"<{name}>".encode(), f"</{name}>".encode()) for name in ("bbb-origin", "bbb-origin-server-name")}


@dataclass(slots=True)
class ScannedMeeting:
    meeting_id: str
    is_breakout: bool
    participants: int
    body: bytes  # the whole document: a slice is only made for the meetings b3lb routes
    start: int
    end: int
    cuts: list[tuple[int, int]] | None = None  # private_spans of the element, once asked for

    def _cuts(self) -> list[tuple[int, int]]:
        if self.cuts is None:
            self.cuts = private_spans(self.body, self.start, self.end)
        return self.cuts

    @property
    def xml(self) -> bytes:
        """The node's own <meeting> element, byte for byte but for b3lb's private metadata."""
        cuts = self._cuts()
        if not cuts:
            return self.body[self.start : self.end]
        return cut(self.body, self.start, self.end, cuts)

    def digest(self) -> bytes:
        """element_digest(self.xml), computed in place (no copy of the element is made)."""
        hasher = blake2b(digest_size=DIGEST_SIZE)
        view, position = memoryview(self.body), self.start
        for begin, stop in self._cuts():
            hasher.update(view[position:begin])
            position = stop
        hasher.update(view[position : self.end])
        return hasher.digest()


def element_digest(xml: bytes) -> bytes:
    """What the poller keeps of a meeting's element to see whether the next poll changed it."""
    return blake2b(xml, digest_size=DIGEST_SIZE).digest()


def private_spans(body: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """Where b3lb's private metadata elements lie in body[start:end], in order.

    The meeting's own <metadata> is its last one (attendees carry <customdata>). An element left
    open (not BBB's output) is cut to the end of the metadata: the nonce must not show either way.
    """
    meta = body.rfind(_META_OPEN, start, end)
    if meta < 0:
        return []
    meta_end = body.find(_META_CLOSE, meta, end)
    if meta_end < 0:
        meta_end = end
    spans: list[tuple[int, int]] = []
    for opening, closing in _PRIVATE:
        found = body.find(opening, meta, meta_end)
        while found >= 0:
            closed = body.find(closing, found, meta_end)
            stop = closed + len(closing) if closed >= 0 else meta_end
            spans.append((found, stop))
            found = body.find(opening, stop, meta_end)
    spans.sort()
    merged: list[tuple[int, int]] = []
    for begin, stop in spans:  # an element left open swallows any found inside it
        if merged and begin < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((begin, stop))
    return merged


def cut(body: bytes, start: int, end: int, spans: list[tuple[int, int]]) -> bytes:
    """body[start:end] without the given spans (sorted, disjoint, inside it)."""
    pieces, position = [], start
    for begin, stop in spans:
        pieces.append(body[position:begin])
        position = stop
    pieces.append(body[position:end])
    return b"".join(pieces)


def without_private(xml: bytes) -> bytes:
    """`xml` (a <meeting> element or a getMeetingInfo answer) without b3lb's private metadata."""
    spans = private_spans(xml, 0, len(xml))
    return cut(xml, 0, len(xml), spans) if spans else xml


def drop_private(metadata: etree._Element) -> bool:
    """Removes b3lb's private children from a parsed <metadata>; whether there were any."""
    private = [child for child in metadata if child.tag in PRIVATE_KEYS]
    for child in private:
        metadata.remove(child)
    return bool(private)


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
    meetings: list[ScannedMeeting] = []
    for meeting in scan_iter(body):
        if meeting is None:
            return None
        meetings.append(meeting)
    return meetings if template_holds(body, len(meetings)) else None


def template_holds(body: bytes, found: int) -> bool:
    """Whether every <meeting> and </meeting> of the document is one of the `found` meetings: a
    nested element, an element with attributes or a stray tag means this is not the template."""
    return body.count(OPEN) == found and body.count(CLOSE) == found


def scan_iter(body: bytes) -> Iterator[ScannedMeeting | None]:
    """`scan` one meeting at a time, so a caller can let other work run between meetings; yields
    None (and stops) where the bytes leave the template. The caller checks `template_holds` at the
    end. Raises ValueError (at once) for a document that is not a SUCCESS answer at all."""
    head_end = body.find(b"<meetings")
    head = body if head_end < 0 else body[:head_end]
    if b"<returncode>SUCCESS</returncode>" not in head or not body.rstrip().endswith(b"</response>"):
        raise ValueError("not a SUCCESS getMeetings document")
    return _meetings(body)


def _meetings(body: bytes) -> Iterator[ScannedMeeting | None]:
    if b"<![CDATA[" in body:
        yield None
        return
    # The loop is written out (no helper calls): it runs for every meeting of every node each cycle.
    find, rfind = body.find, body.rfind
    position = find(OPEN)
    while position >= 0:
        end = find(CLOSE, position)
        if end < 0:
            yield None
            return
        end += _CLOSE_LEN
        id_start = find(_ID_OPEN, position, end)
        id_end = find(_ID_CLOSE, id_start, end) if id_start >= 0 else -1
        if id_end < 0:
            yield None
            return
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
        yield ScannedMeeting(_str(raw_id), is_breakout, participants, body, position, end)
        position = find(OPEN, end)


def details(xml: bytes) -> tuple[tuple[int, int, int, int, int], str, str]:
    """Counts (participants, listeners, voice, video, moderators) and the origin metadata."""
    counts = tuple(_int(_text(xml, _TAGS[name])) for name in _FIELDS)
    start = xml.rfind(b"<metadata>")
    metadata = xml[start : xml.find(b"</metadata>", start)] if start >= 0 else b""
    origin = _str(_text(metadata, _META["bbb-origin"]))
    server = _str(_text(metadata, _META["bbb-origin-server-name"]))
    return counts, origin, server  # type: ignore[return-value]
