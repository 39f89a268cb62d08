"""Helpers of the drain/panic/maintenance tests (tests/test_admin_lifecycle*.py): a frontend's
end-callback endpoint on loopback, creating a meeting on a chosen node, and counts read straight from
the database (never from what the code under test reports)."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from urllib.parse import parse_qsl, quote, urlsplit

import asyncpg
from api_helpers import create_ok, owner, set_node
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from b3lb.testing.fakebbb import FakeNode
from b3lb.testing.harness import Harness

ACTOR = "test:lifecycle"


class Frontend:
    """A frontend's end-callback endpoint on loopback: records every hit with the time it came, and
    runs `on_hit(uri)` before it answers (a frontend that acts on the callback at once)."""

    def __init__(self, status: int = 200) -> None:
        self.hits: list[tuple[str, float]] = []
        self.status = status
        self.on_hit: Callable[[str], Awaitable[object]] | None = None
        frontend = self

        class Hit(RequestHandler):
            async def get(self) -> None:
                frontend.hits.append((self.request.uri or "", time.time()))
                if frontend.on_hit is not None:
                    await frontend.on_hit(self.request.uri or "")
                self.set_status(frontend.status)

        sock = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)[0]
        self.port = sock.getsockname()[1]
        self.server = HTTPServer(Application([(r"/.*", Hit)]))
        self.server.add_sockets([sock])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def params(self) -> dict[str, list[tuple[str, str]]]:
        """meetingID -> the query pairs of its callback."""
        found = {}
        for uri, _ in self.hits:
            pairs = parse_qsl(urlsplit(uri).query)
            found[dict(pairs)["meetingID"]] = pairs
        return found

    def stop(self) -> None:
        self.server.stop()


def running_frontend() -> Iterator[Frontend]:
    """The body of each test file's `frontend` fixture (it needs the test's io_loop)."""
    receiver = Frontend()
    yield receiver
    receiver.stop()


def callback_param(url: str) -> str:
    return "meta_endCallbackUrl=" + quote(url, safe="")


async def create_on(h: Harness, node: FakeNode, meeting_id: str, extra: str = "") -> None:
    """Create a meeting that lands on `node`: every other node is in maintenance meanwhile."""
    others = [n for n in h.fleet.nodes if n is not node]
    for other in others:
        await set_node(h, other, maintenance=True)
    try:
        await create_ok(h, meeting_id, extra=extra)
    finally:
        for other in others:
            await set_node(h, other, maintenance=False)
    assert owner(h, meeting_id) is node


async def audit_rows(h: Harness) -> list[asyncpg.Record]:
    assert h.pool is not None
    return await h.pool.fetch("SELECT actor, action, target, detail FROM admin_audit ORDER BY id")


async def maintenance_of(h: Harness) -> dict[str, bool]:
    assert h.pool is not None
    return {r["slug"]: r["maintenance"] for r in await h.pool.fetch("SELECT slug, maintenance FROM node")}


async def node_row_count(h: Harness, node: FakeNode) -> int:
    """Routing rows pointing at `node`, read from the database (not from what the code reports)."""
    assert h.pool is not None
    return int(await h.pool.fetchval(
        "SELECT count(*) FROM meeting m JOIN node n ON n.id = m.node_id WHERE n.slug = $1", node.name))
