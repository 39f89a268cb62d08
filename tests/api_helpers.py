"""Small helpers shared by the end-to-end API tests (test_api_*.py)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

from lxml import etree
from tornado.httpclient import HTTPResponse

from b3lb.testing.fakebbb import FakeNode, RecordedRequest
from b3lb.testing.harness import Harness

BASE = "https://lb.test"
END_PREFIX = f"{BASE}/b3lb/b/meeting/end?nonce="
NO_MEETINGS = [
    ("returncode", "SUCCESS"),
    ("meetings", None),
    ("messageKey", "noMeetings"),
    ("message", "no meetings were found on this server"),
]
NOT_FOUND = [("returncode", "FAILED"), ("messageKey", "notFound"), ("message", "A meeting with that ID does not exist")]
MISSING_ID = [
    ("returncode", "FAILED"),
    ("messageKey", "missingParamMeetingID"),
    ("message", "You must specify a meeting ID for the meeting."),
]
NOT_RUNNING = [("returncode", "SUCCESS"), ("running", "false")]
LIMIT_REACHED = [("returncode", "FAILED"), ("message", "Meeting/Attendee limit reached.")]
NO_NODE = [("returncode", "FAILED"), ("message", "No Node available.")]


def q(*pairs: tuple[str, str], **params: str) -> str:
    """Form-encode parameters (pairs first, in order, then keyword arguments)."""
    return urlencode([*pairs, *params.items()])


def xml(response: HTTPResponse) -> etree._Element:
    return etree.fromstring(response.body)


def children(response: HTTPResponse) -> list[tuple[str, str | None]]:
    """Top-level (tag, text) pairs of a <response>, whitespace-only text as None."""
    root = xml(response)
    assert root.tag == "response", response.body
    return [(c.tag, c.text.strip() or None if c.text is not None else None) for c in root]


def sent(node: FakeNode, call: str) -> list[RecordedRequest]:
    return [r for r in node.requests if r.call == call]


def all_sent(h: Harness, call: str) -> list[RecordedRequest]:
    return [r for node in h.fleet.nodes for r in sent(node, call)]


def pairs(request: RecordedRequest) -> list[tuple[str, str]]:
    """The request's query parameters in order, without the checksum."""
    return [(k, v) for k, v in parse_qsl(request.query, keep_blank_values=True) if k != "checksum"]


def url_pairs(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def hosting(h: Harness, meeting_id: str) -> list[FakeNode]:
    return [n for n in h.fleet.nodes if meeting_id in n.meetings]


def owner(h: Harness, meeting_id: str) -> FakeNode:
    nodes = hosting(h, meeting_id)
    assert len(nodes) == 1, f"{meeting_id} on {nodes}"
    return nodes[0]


def node_id(h: Harness, node: FakeNode) -> int:
    assert h.runtime is not None
    return next(e.node.id for e in h.runtime.loads.nodes.values() if e.node.slug == node.name)


async def create(h: Harness, meeting_id: str, name: str = "Room", extra: str = "", **kw: object) -> HTTPResponse:
    query = q(meetingID=meeting_id, name=name) + (f"&{extra}" if extra else "")
    return await h.call("create", query, **kw)  # type: ignore[arg-type]


async def create_ok(h: Harness, meeting_id: str, name: str = "Room", extra: str = "", **kw: object) -> etree._Element:
    r = await create(h, meeting_id, name, extra, **kw)
    assert r.code == 200, r.body
    doc = xml(r)
    assert doc.findtext("returncode") == "SUCCESS", r.body
    return doc


async def meeting_rows(h: Harness, meeting_id: str | None = None) -> list[dict[str, object]]:
    assert h.pool is not None
    if meeting_id is None:
        rows = await h.pool.fetch("SELECT * FROM meeting ORDER BY id")
    else:
        rows = await h.pool.fetch("SELECT * FROM meeting WHERE meeting_id = $1 ORDER BY id", meeting_id)
    return [dict(r) for r in rows]


async def set_node(h: Harness, node: FakeNode, **columns: object) -> None:
    """Change node columns in the database and reload the in-memory tables."""
    assert h.pool is not None
    for column, value in columns.items():
        await h.pool.execute(f"UPDATE node SET {column} = $1 WHERE slug = $2", value, node.name)
    await h.reload()


async def add_rule(
    h: Harness, create_join: str, mode: str, name: str, value: str = "", *, slug: str = "ABC", sub_id: int | None = None
) -> None:
    """A parameter rule of the tenant (sub_id None) or of one of its secrets."""
    assert h.pool is not None
    tenant = h.tenants[slug]
    if sub_id is None:
        owner_column, owner_id = "tenant_id", tenant.tenant_id
    else:
        owner_column, owner_id = "secret_id", tenant.secrets[sub_id][0]
    await h.pool.execute(
        f"INSERT INTO parameter ({owner_column}, create_join, mode, name, value) VALUES ($1, $2, $3, $4, $5)",
        owner_id, create_join, mode, name, value,
    )
