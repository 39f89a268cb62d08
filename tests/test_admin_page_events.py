"""The dashboard without a browser (issue 13.3): the page and its headers, the event stream's
authentication, snapshot content, tenant-scoped tokens, the client limit, a database outage, and
the per-cluster load history."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from admin_page_support import WAIT, dashboard_of, make_token, wait_for
from api_helpers import create_ok

from b3lb.admin import events, history, lifecycle, tokens
from b3lb.admin.events import EVENTS_PATH
from b3lb.admin.page import CONTENT_SECURITY_POLICY, DashboardFiles
from b3lb.balancer import NodeEntry
from b3lb.models import Cluster, Node
from b3lb.testing.harness import BASE_DOMAIN, Harness


class RawStream:
    """An event-stream client on a plain socket (HTTP/1.0: no chunking to undo), so a test decides
    exactly when the connection goes away."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""

    @classmethod
    async def open(cls, h: Harness, token: str | None, path: str = EVENTS_PATH) -> RawStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {BASE_DOMAIN}\r\n{auth}Accept: text/event-stream\r\n\r\n".encode())
        stream = cls(reader, writer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        lines = head.decode("latin-1").split("\r\n")
        stream.status = int(lines[0].split()[1])
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                stream.headers[name.strip().lower()] = value.strip()
        if stream.status != 200:
            stream.body = await asyncio.wait_for(reader.read(), WAIT)
        return stream

    async def event(self) -> tuple[str, Any]:
        """The next event (name, decoded data); ('', None) when the server ended the stream."""
        name, data = "", []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), WAIT)
            if not line:
                return "", None
            text = line.decode().rstrip("\n")
            if text == "":
                if data:
                    return name or "message", orjson.loads("\n".join(data))
                name = ""
            elif text.startswith("event:"):
                name = text[6:].strip()
            elif text.startswith("data:"):
                data.append(text[5:].strip())

    async def until(self, wanted: str, check: Any = None) -> Any:
        """Data of the next `wanted` event for which `check(data)` holds."""
        while True:
            name, data = await self.event()
            assert name, f"stream ended while waiting for {wanted}"
            if name == wanted and (check is None or check(data)):
                return data

    def close(self) -> None:
        self.writer.close()


@asynccontextmanager
async def stream(h: Harness, token: str | None) -> AsyncIterator[RawStream]:
    s = await RawStream.open(h, token)
    try:
        yield s
    finally:
        s.close()


# -- the page -------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_page_has_only_the_login_and_strict_headers(db_url):
    async with Harness(db_url, nodes=2) as h:
        await h.poll()
        r = await h.request("/b3lb/admin/")
        assert r.code == 200 and r.headers["Content-Type"].startswith("text/html")
        assert r.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "no-store" in r.headers["Cache-Control"]
        page = r.body.decode()
        assert 'id="login-form"' in page and 'type="password"' in page
        # Nothing about the fleet, no inline script or style.
        for node in h.fleet.nodes:
            assert node.name not in page and node.domain not in page
        assert r.body == DashboardFiles().page  # the same bytes whatever the fleet: nothing of it inside
        assert "<script>" not in page and "style=" not in page and "<style" not in page
        assert '<script src="/b3lb/admin/static/app.js?v=' in page

        r = await h.request("/b3lb/admin")
        assert r.code == 302 and r.headers["Location"] == "/b3lb/admin/"
        assert r.headers["X-Frame-Options"] == "DENY"


@pytest.mark.gen_test(timeout=30)
async def test_assets_are_the_shipped_files_only(db_url):
    async with Harness(db_url, nodes=1) as h:
        r = await h.request("/b3lb/admin/static/app.js")
        assert r.code == 200 and r.headers["Content-Type"].startswith("text/javascript")
        assert b"readEvents" in r.body and r.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        etag = r.headers["ETag"]
        r = await h.request("/b3lb/admin/static/app.js", headers={"If-None-Match": etag})
        assert r.code == 304
        r = await h.request("/b3lb/admin/static/app.css")
        assert r.code == 200 and r.headers["Content-Type"].startswith("text/css")
        for bad in ("index.html", "nope.js", "..%2fpage.py", "../page.py", "%2e%2e/events.py", "app.js%00"):
            r = await h.request(f"/b3lb/admin/static/{bad}")
            assert r.code == 404, bad


# -- authentication -------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_events_refuse_missing_bad_and_revoked_tokens(db_url):
    async with Harness(db_url, nodes=1) as h:
        token = await make_token(h, "ops", "read")
        assert h.pool is not None
        async with h.pool.acquire() as conn:
            await tokens.token_revoke(conn, "ops")
        for header in (None, "", "b3lb_" + "x" * 43, token, "Basic " + token, "Bearer"):
            headers = {} if header is None else {"Authorization": header if " " in header or header == "Bearer"
                                                 else f"Bearer {header}"}
            r = await h.request(EVENTS_PATH, headers=headers)
            assert r.code == 401, header
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert r.headers["Content-Type"] == "application/json"
            assert orjson.loads(r.body)["error"] == "unauthorized"
            assert r.headers["X-Frame-Options"] == "DENY"
        r = await h.request(EVENTS_PATH, method="POST")
        assert r.code == 405 and r.headers["Allow"] == "GET"
        assert not dashboard_of(h).clients


# -- content --------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_snapshot_shows_nodes_tenants_history_and_render_queue(db_url):
    async with Harness(db_url, nodes=2, tenants=("ABC", "DEF")) as h:
        dashboard = dashboard_of(h)
        dashboard.tick = 0.1
        await create_ok(h, "room-1")
        await create_ok(h, "room-2")
        assert h.pool is not None
        await h.pool.execute("UPDATE tenant SET meeting_limit = 5, attendee_limit = 0 WHERE slug = 'ABC'")
        await h.reload()
        for state in ("QUEUED", "QUEUED", "RUNNING", "FAILED"):
            set_id = str(uuid.uuid4())
            await h.pool.execute("INSERT INTO record_set (id, nonce) VALUES ($1::text, $1::text::uuid)", set_id)
            await h.pool.execute("INSERT INTO render_job (recordset_id, state) VALUES ($1, $2)", set_id, state)
        await h.poll()
        dashboard.history.sample(h.runtime.loads.nodes.values())  # type: ignore[union-attr]
        token = await make_token(h, "viewer", "read")
        async with stream(h, token) as s:
            assert s.status == 200
            assert s.headers["content-type"].startswith("text/event-stream")
            assert "no-store" in s.headers["cache-control"]
            hello = await s.until("hello")
            assert hello == {"name": "viewer", "scope": "read", "tenant": None, "can_write": False, "tick": 0.1}
            hist = await s.until("history")
            assert list(hist["series"]) == ["main"] and hist["fields"] == list(history.FIELDS)
            first, sample = hist["series"]["main"]  # the sampler's at start-up, and this test's
            assert first[1:] == [0.0, 0, 0, 2, 2] and sample[0] >= first[0]
            assert sample[1:] == [20.0, 0, 2, 2, 2]  # load 2 meetings x 10 (m factor) + attendees 0; 2 of 2 ok
            snap = await s.until("snapshot")
        nodes = {n["slug"]: n for n in snap["nodes"]}
        assert set(nodes) == {n.name for n in h.fleet.nodes}
        assert all(n["state"] == "ok" and n["cluster"] == "main" for n in nodes.values())
        assert sum(n["meetings"] for n in nodes.values()) == 2 and sum(n["routed"] for n in nodes.values()) == 2
        tenants = {t["slug"]: t for t in snap["tenants"]}
        assert tenants["ABC"] | {"id": 0} == {"id": 0, "slug": "ABC", "secrets": 1, "meetings": 2, "meeting_limit": 5,
                                               "attendees": 0, "attendee_limit": None}
        assert tenants["DEF"]["meetings"] == 0 and tenants["DEF"]["meeting_limit"] == 999999
        queue = snap["render_queue"]
        assert (queue["queued"], queue["due"], queue["running"], queue["failed"]) == (2, 2, 1, 1)
        assert queue["stale"] is False and queue["oldest_queued_seconds"] >= 0
        assert snap["database"] == {"ok": True, "message": ""}
        # No secret of a node or tenant is in the stream.
        text = orjson.dumps(snap).decode()
        assert all(n.secret not in text for n in h.fleet.nodes) and h.secret("ABC") not in text
        await wait_for(lambda: not dashboard.clients, "the closed stream leaves")

        write = await make_token(h, "operator", "write")
        async with stream(h, write) as s:
            assert (await s.until("hello"))["can_write"] is True


@pytest.mark.gen_test(timeout=60)
async def test_a_node_going_down_shows_in_the_next_snapshot(db_url):
    async with Harness(db_url, nodes=2) as h:
        dashboard_of(h).tick = 0.1
        await h.poll()
        token = await make_token(h, "viewer", "read")
        down = h.fleet.nodes[0]
        async with stream(h, token) as s:
            snap = await s.until("snapshot")
            assert {n["slug"]: n["state"] for n in snap["nodes"]}[down.name] == "ok"
            down.set_down()
            await h.poll()
            await h.poll()  # error_after = 2
            snap = await s.until("snapshot", lambda d: any(n["state"] != "ok" for n in d["nodes"]))
            states = {n["slug"]: n for n in snap["nodes"]}
            assert states[down.name]["state"] == "error" and states[down.name]["last_error"]
            assert states[h.fleet.nodes[1].name]["state"] == "ok"


@pytest.mark.gen_test(timeout=60)
async def test_a_tenant_token_sees_its_tenant_only(db_url):
    async with Harness(db_url, nodes=2, tenants=("ABC", "DEF")) as h:
        dashboard_of(h).tick = 0.1
        await create_ok(h, "room", slug="DEF")
        await h.poll()
        token = await make_token(h, "abc-ops", "write", tenant="ABC")
        async with stream(h, token) as s:
            hello = await s.until("hello")
            assert hello["tenant"] == "ABC" and hello["can_write"] is False  # node actions are fleet writes
            names = []
            while not names or names[-1] != "snapshot":
                name, snap = await s.event()
                names.append(name)
        assert "history" not in names
        assert snap["nodes"] is None and snap["render_queue"] is None
        assert [t["slug"] for t in snap["tenants"]] == ["ABC"]
        text = orjson.dumps(snap).decode()
        assert "DEF" not in text and all(n.name not in text for n in h.fleet.nodes)


@pytest.mark.gen_test(timeout=60)
async def test_a_drained_node_that_goes_down_shows_as_down_and_clusters_show_their_switch(db_url):
    async with Harness(db_url, nodes=2) as h:
        dashboard_of(h).tick = 0.1
        await h.poll()
        token = await make_token(h, "viewer", "read")
        drained, other = h.fleet.nodes
        assert h.pool is not None and h.runtime is not None
        async with h.pool.acquire() as conn, conn.transaction():
            await lifecycle.node_drain(conn, drained.name, "test")
        await h.reload()
        async with stream(h, token) as s:
            snap = await s.until("snapshot", lambda d: any(n["maintenance"] for n in d["nodes"]))
            row = {n["slug"]: n for n in snap["nodes"]}[drained.name]
            assert (row["state"], row["maintenance"], row["node_maintenance"], row["drained"]) == (
                "maintenance", True, True, True)  # in maintenance and nothing routed there
            assert snap["clusters"] == [{"name": "main", "maintenance": False, "nodes": 2, "nodes_ok": 1}]
            drained.set_down()
            await h.poll()
            await h.poll()  # error_after = 2
            snap = await s.until("snapshot", lambda d: any(n["error"] for n in d["nodes"]))
            row = {n["slug"]: n for n in snap["nodes"]}[drained.name]
            assert (row["state"], row["maintenance"], row["error"]) == ("error", True, True)  # down shows as down
            async with h.pool.acquire() as conn, conn.transaction():
                await lifecycle.cluster_maintenance(conn, "main", True, "test")
            await h.reload()
            snap = await s.until("snapshot", lambda d: d["clusters"][0]["maintenance"])
            rows = {n["slug"]: n for n in snap["nodes"]}
            assert snap["clusters"] == [{"name": "main", "maintenance": True, "nodes": 2, "nodes_ok": 0}]
            assert (rows[other.name]["state"], rows[other.name]["node_maintenance"],
                    rows[other.name]["cluster_maintenance"]) == ("maintenance", False, True)


# -- limits and failures --------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_streams_are_bounded_and_leave_when_the_client_goes(db_url):
    async with Harness(db_url, nodes=1) as h:
        dashboard = dashboard_of(h)
        dashboard.max_clients = 2
        dashboard.tick = 0.1
        token = await make_token(h, "viewer", "read")
        first, second = await RawStream.open(h, token), await RawStream.open(h, token)
        await first.until("snapshot")
        await second.until("snapshot")
        third = await RawStream.open(h, token)
        assert third.status == 503 and third.headers["retry-after"] == "10"
        assert orjson.loads(third.body)["error"] == "busy"
        assert len(dashboard.clients) == 2
        first.close()
        await wait_for(lambda: len(dashboard.clients) == 1, "the closed stream leaves")
        again = await RawStream.open(h, token)
        assert again.status == 200
        await again.until("snapshot")
        # One build per tick serves every client: park the ticker, then publish once by hand.
        dashboard.tick = 3600.0
        parked = time.time()
        await second.until("snapshot", lambda d: d["at"] > parked)  # built after the change: then it waits
        built = dashboard.snapshots_built
        await dashboard.publish()
        assert dashboard.snapshots_built == built + 1
        at = dashboard.snapshot["at"]  # type: ignore[index]
        assert (await second.until("snapshot"))["at"] == at
        assert (await again.until("snapshot", lambda d: d["at"] == at))["at"] == at
        second.close()
        again.close()
        await wait_for(lambda: not dashboard.clients and not dashboard._running, "the ticker stops with no client")


@pytest.mark.gen_test(timeout=60)
async def test_one_token_cannot_take_every_stream_and_tenant_tokens_leave_room_for_operators(db_url):
    async with Harness(db_url, nodes=1, tenants=("ABC", "DEF")) as h:
        dashboard = dashboard_of(h)
        dashboard.tick = 0.1
        dashboard.max_clients, dashboard.fleet_reserved = 6, 2  # max_per_token stays events.MAX_PER_TOKEN (3)
        viewer = await make_token(h, "viewer", "read")
        ops = await make_token(h, "ops", "read")
        tenant_tokens = [await make_token(h, f"tenant-{n}", "read", tenant=slug)
                         for n, slug in enumerate(("ABC", "DEF"))]
        opened = [await RawStream.open(h, viewer) for _ in range(events.MAX_PER_TOKEN)]
        try:
            assert [s.status for s in opened] == [200] * events.MAX_PER_TOKEN
            refused = await RawStream.open(h, viewer)  # one token, one more stream: refused
            assert refused.status == 429 and refused.headers["retry-after"] == "10"
            assert orjson.loads(refused.body) == {"error": "busy", "message": (
                f"this token already has {events.MAX_PER_TOKEN} dashboard streams open (the most per token)")}
            opened.append(await RawStream.open(h, tenant_tokens[0]))  # 4 of 6 open
            assert opened[-1].status == 200
            refused = await RawStream.open(h, tenant_tokens[1])  # tenants stop at 6 - 2 reserved
            assert refused.status == 503 and orjson.loads(refused.body)["error"] == "busy"
            for _ in range(2):  # the reserved slots are there for an unscoped token
                opened.append(await RawStream.open(h, ops))
                assert opened[-1].status == 200
            refused = await RawStream.open(h, await make_token(h, "third", "read"))  # all 6 taken
            assert refused.status == 503
            assert len(dashboard.clients) == 6
        finally:
            for s in opened:
                s.close()
        await wait_for(lambda: not dashboard.clients, "the closed streams leave")
        again = await RawStream.open(h, viewer)
        assert again.status == 200
        again.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_tenant_stream_is_told_only_that_the_database_is_unavailable(db_url):
    async with Harness(db_url, nodes=2, tenants=("ABC",)) as h:
        dashboard_of(h).tick = 0.1
        await h.poll()
        fleet = await make_token(h, "viewer", "read")
        tenant = await make_token(h, "abc-view", "read", tenant="ABC")
        async with stream(h, fleet) as operator, stream(h, tenant) as customer:
            await operator.until("snapshot")
            await customer.until("snapshot")
            assert h.pool is not None
            await h.pool.close()  # every query now fails as in an outage
            told = await operator.until("error")
            assert told["message"].startswith("database unavailable: ") and len(told["message"]) > 22
            assert (await customer.until("error")) == {"message": "database unavailable"}
            snap = await customer.until("snapshot", lambda d: not d["database"]["ok"])
            assert snap["database"] == {"ok": False, "message": "database unavailable"}
            assert snap["nodes"] is None and snap["clusters"] is None
            text = orjson.dumps(snap).decode()
            assert all(n.domain not in text and n.name not in text for n in h.fleet.nodes)


@pytest.mark.gen_test(timeout=60)
async def test_a_revoked_token_loses_its_open_stream(db_url, monkeypatch):
    monkeypatch.setattr(events, "RECHECK_SECONDS", 0.0)
    async with Harness(db_url, nodes=1) as h:
        dashboard_of(h).tick = 0.1
        token = await make_token(h, "viewer", "read")
        async with stream(h, token) as s:
            await s.until("snapshot")
            assert h.pool is not None
            async with h.pool.acquire() as conn:
                await tokens.token_revoke(conn, "viewer")
            data = await s.until("unauthorized")
            assert "revoked" in data["message"]
            assert await s.event() == ("", None)  # the server ended the stream


@pytest.mark.gen_test(timeout=60)
async def test_database_outage_sends_error_and_keeps_streaming(db_url, caplog):
    async with Harness(db_url, nodes=2) as h:
        dashboard_of(h).tick = 0.1
        await h.poll()
        token = await make_token(h, "viewer", "read")
        async with stream(h, token) as s:
            before = await s.until("snapshot")
            assert before["render_queue"]["stale"] is False
            caplog.clear()
            assert h.pool is not None
            await h.pool.close()  # every query now fails as in an outage
            message = await s.until("error")
            assert message["message"].startswith("database unavailable")
            snap = await s.until("snapshot")
            assert snap["database"]["ok"] is False and snap["render_queue"]["stale"] is True
            assert {n["slug"] for n in snap["nodes"]} == {n.name for n in h.fleet.nodes}  # memory still shown
        assert not [r for r in caplog.records if r.exc_info and r.name.startswith("b3lb")]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("b3lb.admin")]


# -- the load history -----------------------------------------------------------------------------


def entry(cluster: str, slug: str, *, meetings: int = 0, attendees: int = 0, error: bool = False,
          maintenance: bool = False) -> NodeEntry:
    c = Cluster(id=hash(cluster) % 1000, name=cluster)
    n = Node(id=hash(slug) % 100000, cluster_id=c.id, slug=slug, domain="x", secret="s", meetings=meetings,
             attendees=attendees, has_errors=error, maintenance=maintenance)
    e = NodeEntry(node=n, cluster=c)
    e.recompute()
    return e


def test_history_sums_usable_nodes_per_cluster():
    samples = history.summarize([
        entry("a", "a1", meetings=2, attendees=3),
        entry("a", "a2", meetings=1, attendees=10, error=True),
        entry("a", "a3", meetings=5, maintenance=True),
        entry("b", "b1", meetings=1, attendees=1),
    ], at=100.0)
    assert samples["a"].as_list() == [100.0, 23.0, 3, 2, 1, 3]  # 3 attendees + 2 meetings x 10
    assert samples["b"].as_list() == [100.0, 11.0, 1, 1, 1, 1]


def test_history_is_bounded_in_time_clusters_and_samples():
    h = history.LoadHistory(span=60.0, every=10.0, max_clusters=2)
    assert h.per_sample == 7
    for step in range(20):
        h.sample([entry("a", "a1"), entry("b", "b1"), entry("c", "c1")], now=1000.0 + step * 10)
    assert set(h.rings) == {"a", "b"}  # the third cluster is not tracked
    assert all(len(ring) == 7 for ring in h.rings.values())
    assert [s[0] for s in h.series(["a"])["a"]] == [1130.0 + 10 * i for i in range(7)]
    assert h.version == 20
    h.sample([entry("b", "b1")], now=1300.0)  # cluster a left the table: dropped once its samples age out
    assert set(h.rings) == {"b"} and h.sample_count() == 1
    with pytest.raises(ValueError):
        history.LoadHistory(span=5.0, every=10.0)
