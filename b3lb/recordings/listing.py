"""The getRecordings document (spec 2.11, B3LB's element order with the REC fixes), built with lxml.

One `<recording>` per rendered record, and one per uploaded set still waiting for its videos
(state `processing`, recordID = the set's public_id, never its nonce; `<playback></playback>`
without a format). Metadata elements are sorted by key, as in the spec's example; the keys that
carry the load balancer's own nonces or the frontend's callback URLs are never shown, and
`endcallbackurl` is the frontend's own end callback, when it gave one. No `<breakout>` (B3LB's
inverted condition; breakouts are never stored).

Speed (issue 10.4: 1,000 recordings in under 50 ms): creating elements costs lxml about three
times as much as setting a text, and reaching an element from Python costs about as much again.
So a template `<recording>` per (state, metadata keys) holds every element, and keeps Python
references to those whose text varies: per recording, those texts are set on the template (every
one of them, each time: nothing of the previous recording may remain) and the template is deep
copied (C speed) into the document. Templates live in a bounded cache.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from lxml import etree

from b3lb.api.xml import ApiResult

NO_RECORDINGS = ApiResult(
    b"<response><returncode>SUCCESS</returncode><recordings></recordings><messageKey>noRecordings</messageKey>"
    b"<message>There are no recordings for the meeting(s).</message></response>"
)
# Never shown: the set's upload nonce (b3lb-recordset), the node's copy of the end callback (the LB's
# URL with the meeting nonce) and the ready URL (it may carry the frontend's token). Lower case.
HIDDEN_KEYS = frozenset({"b3lb-recordset", "endcallbackurl", "bbb-recording-ready-url"})
# Characters XML 1.0 cannot carry (lxml refuses them): C0 controls but tab/newline/CR, surrogates, U+FFFE/F.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_CHILDREN = (
    "recordID", "meetingID", "internalMeetingID", "name", "isBreakout", "published", "state", "startTime",
    "endTime", "participants", "rawSize", "metadata", "size", "playback", "data",
)  # fmt: skip
_FORMAT = ("type", "url", "processingTime", "length", "size")
_METADATA = _CHILDREN.index("metadata")
_PLAYBACK = _CHILDREN.index("playback")
_TEMPLATES: dict[tuple[str, tuple[str, ...]], _Template] = {}
_MAX_TEMPLATES = 256  # metadata keys are client input (updateRecordings): the cache must stay bounded


def document(rows: Iterable[Mapping[str, Any]], base_url: str) -> ApiResult:
    """The SUCCESS document for `rows` of Q.rec_list (noRecordings when there are none)."""
    rows = list(rows)
    if not rows:
        return NO_RECORDINGS
    try:
        body = _build(rows, base_url, clean=False)
    except ValueError:  # a stored name or value XML cannot carry: build again, leaving such things out
        body = _build(rows, base_url, clean=True)
    return ApiResult(body)


class _Template:
    """A `<recording>` with every element and the texts that do not vary, plus the elements whose
    text is set per recording: the recording's own, its metadata's (named after `keys`), its format's."""

    __slots__ = ("element", "children", "metadata", "format")

    def __init__(self, state: str, keys: tuple[str, ...]) -> None:
        recording = etree.Element("recording")
        for tag in _CHILDREN:
            etree.SubElement(recording, tag)
        recording[_CHILDREN.index("isBreakout")].text = "false"  # breakouts are refused at upload (spec 4.10)
        recording[_CHILDREN.index("published")].text = "true" if state == "published" else "false"
        recording[_CHILDREN.index("state")].text = state
        recording[_CHILDREN.index("data")].text = ""  # <data></data>, as B3LB writes it
        for key in keys:  # ValueError for a key that is no XML name
            etree.SubElement(recording[_METADATA], key)
        playback = recording[_PLAYBACK]
        if state == "processing":
            playback.text = ""  # <playback></playback>: no format until a video exists
        else:
            fmt = etree.SubElement(playback, "format")
            for tag in _FORMAT:
                etree.SubElement(fmt, tag)
        self.element = recording
        self.children = list(recording)
        self.metadata = list(recording[_METADATA])
        self.format = list(playback[0]) if len(playback) else None


def _template(state: str, keys: tuple[str, ...]) -> _Template:
    found = _TEMPLATES.get((state, keys))
    if found is None:
        found = _Template(state, keys)
        if len(_TEMPLATES) >= _MAX_TEMPLATES:
            _TEMPLATES.clear()
        _TEMPLATES[(state, keys)] = found
    return found


def _metadata(row: Mapping[str, Any]) -> dict[str, str]:
    """The metadata shown: the stored keys but the hidden ones, over BBB's defaults."""
    values: dict[str, str] = {"isBreakout": "false", "meetingId": row["meeting_id"], "gl-listed": "false"}
    if row["metadata"]:
        for key, value in orjson.loads(row["metadata"]).items():
            if isinstance(value, str) and key.lower() not in HIDDEN_KEYS:
                values[key] = value
    if "meetingName" not in values:
        values["meetingName"] = row["set_name"]
    if row["end_callback_url"]:
        values["endcallbackurl"] = row["end_callback_url"]
    return values


def _build(rows: list[Mapping[str, Any]], base_url: str, *, clean: bool) -> bytes:
    root = etree.Element("response")
    etree.SubElement(root, "returncode").text = "SUCCESS"
    append = etree.SubElement(root, "recordings").append
    deepcopy = copy.deepcopy
    text: Callable[[Any], str] = _clean if clean else str
    playback_base = f"{base_url}/b3lb/r/"
    for row in rows:
        values = _metadata(row)
        keys = tuple(sorted(k for k in values if not clean or _NAME.match(k)))
        state = "processing" if row["processing"] else "published" if row["published"] else "unpublished"
        template = _template(state, keys)
        (record_id, meeting_id, internal_id, name, _, _, _, start, end, participants, raw_size, _, size, _,
         _) = template.children  # fmt: skip
        record_id.text = row["record_id"]
        meeting_id.text = text(row["meeting_id"])
        internal_id.text = text(row["internal_id"] or row["meeting_id"])
        name.text = text(row["name"])
        start.text = str(row["start_ms"] or 0)
        end.text = str(row["end_ms"] or 0)
        participants.text = str(row["participants"])
        raw_size.text = str(row["raw_size"])
        for element, key in zip(template.metadata, keys, strict=True):
            element.text = text(values[key])
        size.text = bytes_text = str(row["size"])
        if template.format is not None:
            kind, url, processing_time, length, format_size = template.format
            kind.text = row["format_type"]
            url.text = playback_base + row["nonce"]
            processing_time.text = str(row["processing_ms"])
            length.text = str(row["minutes"])
            format_size.text = bytes_text
        append(deepcopy(template.element))
    return etree.tostring(root, encoding="utf-8")


def _clean(value: object) -> str:
    return NOT_XML.sub("", str(value))
