"""The dashboard's live data: `GET /b3lb/admin/api/v1/events`, server-sent events (issue 13.3).

Authenticated by `Authorization: Bearer <token>` (read scope); the page reads the stream with
fetch(), as EventSource cannot send that header. Frames:

- `hello` once: the token's name, scope and tenant, whether its buttons work (write scope on the
  whole fleet) and the tick.
- `history` on connect and after each new sample: per-cluster load over the last hour
  (b3lb/admin/history.py). Fleet tokens only.
- `snapshot` on connect and every TICK_SECONDS: clusters (with their own maintenance switch),
  nodes, tenants with usage against limits, the render queue, the database's state.
- `error` alongside a snapshot while the database does not answer: the snapshot then carries the
  in-memory parts and the last render queue read. Fleet tokens get the error's text; tenant-scoped
  ones only "database unavailable" (the text may name hosts of the installation).
- `unauthorized` when a periodic re-check finds the token revoked or expired; the stream ends.

One snapshot is built per tick for all clients (from the serving process's memory plus one small
query), in slices that give the loop a turn; each client holds only the newest frame, so a slow
client skips ticks instead of piling them up. At most MAX_CLIENTS streams are open at once, at most
MAX_PER_TOKEN of them with one token (a leaked or looping read token cannot take them all), and
tenant-scoped tokens leave FLEET_RESERVED of them to unscoped ones, so operators always get in.

A tenant-scoped token is let in but sees its own tenant's row only: no nodes, no history, no
render queue (fleet resources need an unscoped token, as in the admin API).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from tornado.iostream import StreamClosedError

from b3lb.admin import tokens
from b3lb.admin.api_core import AdminApiHandler
from b3lb.admin.history import FIELDS, LoadHistory
from b3lb.admin.page import apply_security_headers
from b3lb.balancer import NodeEntry
from b3lb.db import Q
from b3lb.loadscore import node_state
from b3lb.outage import describe, is_database_unavailable
from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.admin.events")

EVENTS_PATH = "/b3lb/admin/api/v1/events"
TICK_SECONDS = 2.0
MAX_CLIENTS = 16
MAX_PER_TOKEN = 3  # streams one token may hold (a few tabs)
FLEET_RESERVED = 4  # of MAX_CLIENTS, only for tokens without a tenant
GENERIC_DATABASE_ERROR = "database unavailable"  # what a tenant-scoped stream is told of an outage
RECHECK_SECONDS = 60.0  # a revoked or expired token loses its open stream within this time
QUERY_TIMEOUT = 2.0
SLICE_ITEMS = 500  # nodes or tenants per slice of a snapshot build before the loop gets a turn
ERROR_TEXT = 200


def frame(event: str, data: object) -> bytes:
    """One server-sent event. orjson never emits a raw newline, so the data is one `data:` line."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class Mailbox:
    """The newest frame for one client; an older one not yet sent is replaced, not queued."""

    def __init__(self) -> None:
        self._latest: bytes | None = None
        self._ready = asyncio.Event()
        self.closed = False

    def post(self, data: bytes) -> None:
        self._latest = data
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def take(self) -> bytes | None:
        """The next frame, or None once closed."""
        await self._ready.wait()
        self._ready.clear()
        if self.closed:
            return None
        data, self._latest = self._latest, None
        return data


@dataclass(eq=False)
class Client:
    principal: tokens.Principal
    mailbox: Mailbox = field(default_factory=Mailbox)
    history_sent: int = -1  # the history version this client has

    @property
    def fleet(self) -> bool:
        return self.principal.tenant_id is None


def node_row(entry: NodeEntry, routed: int, now: float) -> dict[str, Any]:
    """One node for the table. `state` says error before maintenance: a drained node that went down
    shows as down (its maintenance is in `maintenance`). `drained`: in maintenance, nothing routed."""
    node = entry.node
    maintenance = entry.in_maintenance
    return {
        "id": node.id, "cluster": entry.cluster.name, "slug": node.slug,
        "state": node_state(node.has_errors, maintenance),
        "maintenance": maintenance, "node_maintenance": node.maintenance,
        "cluster_maintenance": entry.cluster.maintenance, "error": node.has_errors,
        "drained": maintenance and routed == 0,
        "load": round(entry.load, 2), "cpu": round(node.cpu_load, 1),
        "attendees": node.attendees, "meetings": node.meetings, "routed": routed,
        "last_error": entry.last_error[:ERROR_TEXT],
        "poll_age": round(now - entry.last_ok, 1) if entry.last_ok else None,
    }


def _limit(value: int) -> int | None:
    return value if value > 0 else None  # 0 means unlimited (spec section 6)


class Dashboard:
    """Builds the snapshot once per tick and hands it to every open stream."""

    def __init__(self, runtime: Runtime, history: LoadHistory, *, tick: float = TICK_SECONDS,
                 max_clients: int = MAX_CLIENTS, max_per_token: int = MAX_PER_TOKEN,
                 fleet_reserved: int = FLEET_RESERVED) -> None:
        self.runtime = runtime
        self.history = history
        self.tick = tick
        self.max_clients = max_clients
        self.max_per_token = max_per_token
        self.fleet_reserved = fleet_reserved
        self.clients: set[Client] = set()
        self.snapshot: dict[str, Any] | None = None
        self.snapshots_built = 0
        self.render_queue: dict[str, Any] | None = None  # the last one read
        self.database_error = ""
        self._logged_error = ""
        self._frames: dict[int | None, bytes] = {}  # view (tenant id, None: fleet) -> this tick's frames
        self._history_frame: tuple[int, bytes] | None = None
        self._wake = asyncio.Event()
        self._running = False

    # -- clients -------------------------------------------------------------------------------

    def refusal(self, principal: tokens.Principal) -> tuple[int, str] | None:
        """(HTTP status, message) when this token may not open one more stream now, else None."""
        if sum(c.principal.name == principal.name for c in self.clients) >= self.max_per_token:
            return 429, f"this token already has {self.max_per_token} dashboard streams open (the most per token)"
        limit = self.max_clients if principal.tenant_id is None else self.max_clients - self.fleet_reserved
        if len(self.clients) >= limit:
            return 503, f"too many dashboard streams are open (at most {self.max_clients})"
        return None

    def join(self, principal: tokens.Principal) -> Client | None:
        """A new stream's client, or None when `refusal` says no. Its first snapshot is the current
        tick's when there is one, else the ticker builds one at once."""
        if self.refusal(principal) is not None:
            return None
        client = Client(principal)
        self.clients.add(client)
        if self.snapshot is not None and self._running:
            client.mailbox.post(self.frames_for(client))
        elif not self._running:
            self._running = True
            self.runtime.add_task("dashboard events", self._run())
        else:
            self._wake.set()
        return client

    def leave(self, client: Client) -> None:
        client.mailbox.close()
        self.clients.discard(client)
        if not self.clients:
            self._wake.set()  # the ticker stops now rather than after its wait

    async def _run(self) -> None:
        """Tick while anyone listens; stop (and forget the snapshot) when the last one leaves."""
        try:
            while self.clients:
                await self.publish()
                if not self.clients:  # the last one left while this tick was built
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.tick)
                except TimeoutError:
                    pass
        finally:
            self._running = False
            self.snapshot = None
            self._frames = {}

    async def publish(self) -> None:
        self.snapshot = await self.build()
        self.snapshots_built += 1
        self._frames = {}
        for client in list(self.clients):
            client.mailbox.post(self.frames_for(client))

    # -- frames --------------------------------------------------------------------------------

    def frames_for(self, client: Client) -> bytes:
        """What a client gets this tick: the history when it changed (fleet only), an `error` frame
        while the database is down, and the snapshot of its view."""
        head = b""
        if client.fleet and client.history_sent != self.history.version:
            head = self.history_frame()
            client.history_sent = self.history.version
        view = client.principal.tenant_id
        frames = self._frames.get(view)
        if frames is None:
            frames = self._frames[view] = self._encode_view(view)
        return head + frames

    def history_frame(self) -> bytes:
        cached = self._history_frame
        if cached is None or cached[0] != self.history.version:
            data = {"span": self.history.span, "every": self.history.every, "fields": FIELDS,
                    "series": self.history.series()}
            cached = self._history_frame = (self.history.version, frame("history", data))
        return cached[1]

    def _encode_view(self, tenant_id: int | None) -> bytes:
        snapshot = self.snapshot or {}
        if tenant_id is None:
            error = frame("error", {"message": self.database_error}) if self.database_error else b""
            return error + frame("snapshot", snapshot)
        # A tenant's view: its own row, and of an outage only that there is one (the error's text may
        # name database hosts or other parts of the installation).
        error = frame("error", {"message": GENERIC_DATABASE_ERROR}) if self.database_error else b""
        database = {"ok": not self.database_error, "message": GENERIC_DATABASE_ERROR if self.database_error else ""}
        own = [row for row in snapshot.get("tenants", ()) if row["id"] == tenant_id]
        view = {"at": snapshot.get("at"), "database": database, "tenants": own, "clusters": None,
                "nodes": None, "render_queue": None}
        return error + frame("snapshot", view)

    # -- the snapshot --------------------------------------------------------------------------

    async def build(self) -> dict[str, Any]:
        now = time.time()
        nodes = await self._nodes(now)
        tenants = await self._tenants()
        await self._read_render_queue()
        return {
            "at": round(now, 3),
            "clusters": cluster_rows(self.runtime.loads.nodes.values()),
            "nodes": nodes,
            "tenants": tenants,
            "render_queue": self.render_queue,
            "database": {"ok": not self.database_error, "message": self.database_error},
        }

    async def _nodes(self, now: float) -> list[dict[str, Any]]:
        by_node = self.runtime.meetings.by_node
        entries = sorted(self.runtime.loads.nodes.values(), key=lambda e: (e.cluster.name, e.node.slug))
        rows = []
        for index, entry in enumerate(entries, 1):
            rows.append(node_row(entry, len(by_node.get(entry.node.id, ())), now))
            await _turn(index)
        return rows

    async def _tenants(self) -> list[dict[str, Any]]:
        directory, meetings = self.runtime.directory, self.runtime.meetings
        by_tenant = directory.secrets_by_tenant  # swapped whole on reload: this tick keeps one version
        rows = []
        tenants = sorted(directory.tenants_by_id.values(), key=lambda t: t.slug)
        for index, tenant in enumerate(tenants, 1):
            secret_ids = [ctx.secret.id for ctx in by_tenant.get(tenant.id, ())]
            rows.append({
                "id": tenant.id, "slug": tenant.slug, "secrets": len(secret_ids),
                "meetings": sum(meetings.count_for_secret(s) for s in secret_ids),
                "meeting_limit": _limit(tenant.meeting_limit),
                "attendees": sum(meetings.attendees_for_secret(s) for s in secret_ids),
                "attendee_limit": _limit(tenant.attendee_limit),
            })
            await _turn(index)
        return rows

    async def _read_render_queue(self) -> None:
        """One small query per tick. When the database does not answer, the last result stays (marked
        stale) and the outage is logged once (b3lb/outage.py), never a traceback per tick."""
        try:
            rows = await asyncio.wait_for(self.runtime.pool.fetch(Q.dashboard_render_queue), QUERY_TIMEOUT)
        except Exception as exc:
            self.database_error = "database unavailable: " + describe(exc)[:ERROR_TEXT]
            if is_database_unavailable(exc):
                self.runtime.database.failed(f"dashboard: {describe(exc)}")
            elif describe(exc) != self._logged_error:  # a bug: its traceback once, not every tick
                self._logged_error = describe(exc)
                log.exception("dashboard: render queue read failed")
            if self.render_queue is not None:
                self.render_queue = {**self.render_queue, "stale": True}
            return
        self.database_error = ""
        self.render_queue = render_queue_counts(rows)


def cluster_rows(entries: Iterable[NodeEntry]) -> list[dict[str, Any]]:
    """The clusters of the node table, by name, with their own maintenance switch and node counts."""
    clusters: dict[str, dict[str, Any]] = {}
    for entry in entries:
        row = clusters.setdefault(entry.cluster.name, {"name": entry.cluster.name,
                                                       "maintenance": entry.cluster.maintenance,
                                                       "nodes": 0, "nodes_ok": 0})
        row["nodes"] += 1
        row["nodes_ok"] += entry.available
    return [clusters[name] for name in sorted(clusters)]


def render_queue_counts(rows: Iterable[Any]) -> dict[str, Any]:
    counts: dict[str, Any] = {"queued": 0, "due": 0, "running": 0, "failed": 0, "oldest_queued_seconds": None,
                              "stale": False}
    for row in rows:
        counts[row["state"].lower()] = row["jobs"]
        if row["state"] == "QUEUED":
            counts["due"] = row["due"]
            counts["oldest_queued_seconds"] = round(row["oldest_seconds"] or 0.0, 1)
    return counts


async def _turn(index: int) -> None:
    if index % SLICE_ITEMS == 0:
        await asyncio.sleep(0)


class EventsHandler(AdminApiHandler):
    """`GET /b3lb/admin/api/v1/events`: the stream, for a token with read scope. Authentication and
    its 401 are the admin API's (b3lb/admin/api_core.py AdminApiHandler.principal)."""

    allow = "GET"  # for the admin API's 405 answer

    def initialize(self, runtime: Runtime, dashboard: Dashboard) -> None:  # type: ignore[override]
        super().initialize(runtime)
        self.dashboard = dashboard
        self.client: Client | None = None
        self.gone = False  # the client closed the connection

    def set_default_headers(self) -> None:
        super().set_default_headers()  # JSON answers (errors) and no-store
        apply_security_headers(self)

    async def get(self) -> None:
        principal = await self.principal("read")  # every scope includes read; a tenant token sees its tenant
        refused = self.dashboard.refusal(principal)
        client = self.dashboard.join(principal) if refused is None else None
        if client is None:
            status, message = refused or (503, "too many dashboard streams are open")
            self.set_header("Retry-After", "10")
            self.fail(status, "busy", message)
        self.client = client
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("X-Accel-Buffering", "no")  # nginx in front must pass frames on at once
        try:
            await self._stream(client)
        except StreamClosedError:
            pass  # the client went away
        finally:
            self.dashboard.leave(client)
        if not self.gone:
            self.finish()

    async def _stream(self, client: Client) -> None:
        principal = client.principal
        hello = {"name": principal.name, "scope": principal.scope, "tenant": principal.tenant,
                 "can_write": principal.allows("write") and principal.tenant_id is None,
                 "tick": self.dashboard.tick}
        self.write(b"retry: 5000\n\n" + frame("hello", hello))
        await self.flush()
        checked = time.monotonic()
        while True:
            data = await client.mailbox.take()
            if data is None:
                return
            self.write(data)
            await self.flush()
            if time.monotonic() - checked >= RECHECK_SECONDS:
                checked = time.monotonic()
                if not await self._still_valid(principal):
                    self.write(frame("unauthorized", {"message": "the token was revoked or has expired"}))
                    await self.flush()
                    return

    async def _still_valid(self, principal: tokens.Principal) -> bool:
        """Whether the token still opens the dashboard. While the database does not answer the
        stream goes on (it shows memory only, and says the database is down)."""
        presented = tokens.bearer(self.request.headers.get("Authorization"))
        try:
            again = await asyncio.wait_for(tokens.authenticate(self.runtime.pool, presented), QUERY_TIMEOUT)
        except Exception as exc:
            if is_database_unavailable(exc):
                return True
            raise
        return again is not None and again.scope == principal.scope and again.tenant_id == principal.tenant_id

    def on_connection_close(self) -> None:
        self.gone = True
        if self.client is not None:
            self.client.mailbox.close()


def routes(runtime: Runtime, dashboard: Dashboard) -> list[tuple[str, type[AdminApiHandler], dict[str, object]]]:
    return [(EVENTS_PATH + "/?", EventsHandler, {"runtime": runtime, "dashboard": dashboard})]


def start(runtime: Runtime, *, history: LoadHistory | None = None, **options: Any) -> Dashboard:
    """The process's dashboard and its load-history sampler (a background task of the runtime)."""
    history = history or LoadHistory()
    runtime.add_task("dashboard load history", history.run(lambda: runtime.loads.nodes.values()))
    return Dashboard(runtime, history, **options)
