"""What a node or a tenant sends, cut to fit the columns it is stored in.

One rule everywhere: text is truncated to the column's size in characters and loses NUL characters
(PostgreSQL text cannot hold them); counts are clamped into a PostgreSQL integer. A value that does
not fit must never make a whole statement fail, since one statement carries a whole poll cycle.
"""

from __future__ import annotations

ORIGIN_SIZE = 200  # meeting.origin, meeting.origin_server_name, stats.* (varchar(200))
ERROR_SIZE = 500  # node.last_poll_error: enough for a reason, bounded for the dashboard
COUNT_MAX = 2**31 - 1  # PostgreSQL integer
MEETING_XML_MAX = 1024 * 1024  # bytes: a BBB meeting with 1,000 attendees has about 400 KB


def fit_text(value: str, size: int | None = None) -> str:
    if "\x00" in value:
        value = value.replace("\x00", "")
    return value if size is None or len(value) <= size else value[:size]


def fit_count(value: int) -> int:
    return 0 if value < 0 else COUNT_MAX if value > COUNT_MAX else value


def fit_xml_text(data: bytes) -> str | None:
    """A meeting's <meeting> element as text for meeting.xml; None (not shared) when larger than
    MEETING_XML_MAX: other instances then ask its node, as for a meeting not polled yet."""
    if len(data) > MEETING_XML_MAX:
        return None
    text = data.decode(errors="replace")  # a bad byte stays its own
    return text.replace("\x00", "\ufffd") if "\x00" in text else text
