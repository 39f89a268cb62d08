"""A node's `metadata.xml` (spec 4.10), read into what a record set keeps of it.

BBB writes one per published recording: root `<recording>` with `<id>`, `<start_time>`, `<end_time>`
(ms since the epoch), `<participants>`, `<meeting id= externalId= name= breakout=/>`, `<meta>` (one
child per metadata key) and `<raw_size>`. The node is semi-trusted (it holds the set's nonce), so
the document is parsed without entities, network or huge-tree support, and everything kept is cut
to fit its column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lxml import etree

from b3lb.columns import fit_count, fit_text

# record_set columns (sql/0001_schema.sql, sql/0005_recordings.sql)
INTERNAL_ID_SIZE = 200
MEETING_NAME_SIZE = 256
# record_set.metadata: enough for every key BBB and the usual frontends set, bounded for hostile input.
MAX_META_KEYS = 64
META_KEY_SIZE = 128
META_VALUE_SIZE = 2048
# Upper bound of a sane timestamp in ms (year 5138); beyond, or negative, a time is "unknown".
MAX_TIME_MS = 10**14
# The API writes metadata keys back as XML element names: a key must be one (ASCII subset, no
# namespace prefix, not the reserved `xml...` names).
_ELEMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
# Keys never kept: the set's nonce is the upload credential of this endpoint.
DROPPED_KEYS = frozenset({"b3lb-recordset"})

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
                          remove_comments=True, remove_pis=True)


class MetadataError(ValueError):
    """metadata.xml is no XML or has no `<recording>` root; the message says which (no content)."""


@dataclass(frozen=True, slots=True)
class RecordingMetadata:
    internal_id: str  # <id>: BBB's record ID (the node's internal meeting ID plus start time)
    meeting_name: str  # <meeting name=...>, else <meta><meetingName>
    start_ms: int | None
    end_ms: int | None
    participants: int  # default 1 (spec 4.10)
    is_breakout: bool  # <meta><isBreakout>true, or <meeting breakout="true">
    raw_size: int | None  # <raw_size>: the node's raw recording size, as BBB reports it
    meta: dict[str, str] = field(default_factory=dict)


def parse_metadata(data: bytes) -> RecordingMetadata:
    try:
        root = etree.fromstring(data, _PARSER)
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise MetadataError(f"metadata.xml is not well-formed XML (line {getattr(exc, 'lineno', '?')})") from None
    if root is None or root.tag != "recording":
        raise MetadataError("metadata.xml has no <recording> root")
    meeting = root.find("meeting")
    meta = _meta(root.find("meta"))
    name = _attribute(meeting, "name") or meta.get("meetingName", "")
    internal_id = _text(root.find("id")).strip() or _attribute(meeting, "id")
    participants = _integer(_text(root.find("participants")))
    breakout = meta.get("isBreakout", "").strip().lower() == "true" or (
        _attribute(meeting, "breakout").strip().lower() == "true")
    return RecordingMetadata(
        internal_id=fit_text(internal_id, INTERNAL_ID_SIZE),
        meeting_name=fit_text(name, MEETING_NAME_SIZE),
        start_ms=_time(root.find("start_time")),
        end_ms=_time(root.find("end_time")),
        participants=1 if participants is None else fit_count(participants),
        is_breakout=breakout,
        raw_size=_integer(_text(root.find("raw_size"))),
        meta=meta,
    )


def _text(element: etree._Element | None) -> str:
    if element is None or not isinstance(element.text, str):
        return ""
    return element.text


def _attribute(element: etree._Element | None, name: str) -> str:
    return "" if element is None else str(element.get(name) or "")


def _integer(text: str) -> int | None:
    text = text.strip()
    # 18 digits at most: fits a bigint, and int() of a long digit string is slow (refused past 4,300).
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


def _time(element: etree._Element | None) -> int | None:
    value = _integer(_text(element))
    return value if value is not None and 0 < value < MAX_TIME_MS else None


def _meta(element: etree._Element | None) -> dict[str, str]:
    """`<meta>`'s children as key -> text: element children only (no comments or entities), keys
    usable as element names, the first of a repeated key, at most MAX_META_KEYS of them."""
    result: dict[str, str] = {}
    if element is None:
        return result
    for child in element.iterchildren(tag=etree.Element):
        key = child.tag
        if not isinstance(key, str) or len(key) > META_KEY_SIZE or not _ELEMENT_NAME.match(key):
            continue
        if key.lower().startswith("xml") or key in DROPPED_KEYS or key in result:
            continue
        result[key] = fit_text(_text(child), META_VALUE_SIZE)
        if len(result) >= MAX_META_KEYS:
            break
    return result
