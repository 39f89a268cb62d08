"""Taking nodes out of service: drain, panic and cluster-wide maintenance (the CLI and the admin API share these).

Maintenance is the one switch (`node.maintenance`). The balancer gives a node in maintenance no new
meeting (load -2, skipped by `LoadTable.choose` in b3lb/balancer.py), while everything addressed to a
meeting already routed there still goes there: `join` and the pass-through calls refuse only nodes in
error (b3lb/api/join.py `redirect`, b3lb/api/calls.py `owner`), and a `create` of a running meeting
reaches its node. Serving processes read the flag at their next directory refresh
(`api.cache_refresh_interval`, b3lb/runtime.py `refresh_directory`).

- **Drain** (`node_drain`): maintenance on. The meetings end by themselves; the poller, which keeps
  polling nodes in maintenance, deletes each ended meeting's row. `node_drain_status` counts the rows
  left (`meetings_left`), `wait_drained` waits for none.
- **Panic** (`node_panic`): the node's meetings are ended after their frontends were told, so that the
  frontends re-create them elsewhere. Transaction boundaries (network calls are never made inside a
  transaction):
  1. `node_panic_begin`, inside the caller's transaction: maintenance on and the audit row, committed
     before anything is sent.
  2. `node_panic_finish`, outside any transaction, holding a session advisory lock for the node (two
     panics of one node never run side by side):
     a. waits `settle` seconds: every serving process reloads its node table within
        `api.cache_refresh_interval`, after which no new meeting lands on the node and a re-create
        goes elsewhere;
     b. reads the meetings routed to the node (id and nonce of each row);
     c. calls every frontend's end callback (`meeting.end_callback_url`) as the relay of
        b3lb/callbacks.py does (same URL form, `NodeClient.fetch_callback`, whose session resolves
        through the URL guard of b3lb/urlguard.py): one GET each, all at once (bounded), within
        `timeout` seconds;
     d. blanks the callback URL of the delivered ones (one statement), so that the node's own end
        callback, which may come before step f, does not relay them a second time;
     e. sends `end` for each meeting to the node, signed with the node's secret and its cluster's
        algorithm, within `timeout` seconds: a dead node costs at most that, and its rows go anyway;
     f. one transaction: deletes the rows still as read in b (same id, nonce and node), keeps the
        callbacks not delivered in `meeting_ended` (the node's own end callback, if it comes, relays
        them with retries), counts the durations, writes the audit row with what failed.
  A crash between the steps leaves the node in maintenance and the rest of its rows: a second panic
  finishes the job (callbacks are sent at least once, never lost). `recordingmarks` of a callback is
  `true` when the node last reported the meeting as recorded (b3lb cannot know whether anybody pressed
  record; the recording, if any, still arrives through the ready callback).
  Processes learn that the rows are gone at their next meeting read (`api.cache_refresh_interval`); a
  caller inside a serving process passes its `runtime`, which applies both at once there and tells the
  other instances through Redis when configured.
- **Cluster maintenance** (`cluster_maintenance`): every node of a cluster in or out of maintenance.

Every write records an audit row (b3lb/admin/audit.py) in its own transaction with the caller's actor.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from b3lb import validation as V
from b3lb.admin import audit
from b3lb.admin.common import AdminError, Row, cluster_by_name, find_node
from b3lb.admin.fleet import node_list
from b3lb.checksum import signed_query
from b3lb.db import Q
from b3lb.models import Node, secret_label

if TYPE_CHECKING:  # imported where used: every `b3lb` command loads this module, a panic alone needs them
    from b3lb.nodeclient import NodeClient
    from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.admin.lifecycle")

DRAIN_POLL_SECONDS = 1.0  # how often wait_drained reads the meetings left
DRAIN_TIMEOUT = V.Whole(1, 7 * 86400)  # `node drain --wait --timeout SECONDS`
PANIC_TIMEOUT = 30.0  # seconds for all end callbacks, and again for all `end` calls
PANIC_CONCURRENCY = 20  # callbacks or `end` calls in flight at once
_MESSAGE_KEY = re.compile(rb"<messageKey>\s*([^<\s]*)\s*</messageKey>")
Item = TypeVar("Item")


# Drain -------------------------------------------------------------------------------------


def _label(node: asyncpg.Record) -> str:
    return f"{node['cluster']}/{node['slug']}"


async def _status(conn: asyncpg.Connection, node: asyncpg.Record) -> list[Row]:
    """The node as `node list` shows it, plus the meetings still routed to it."""
    shown = [row for row in await node_list(conn, node["cluster"]) if row["slug"] == node["slug"]]
    left = await conn.fetchval(Q.admin_node_meeting_count, node["id"])
    return [{**row, "meetings_left": left, "drained": row["state"] == "maintenance" and left == 0} for row in shown]


async def node_drain(conn: asyncpg.Connection, ref: str, actor: str) -> list[Row]:
    """Maintenance on: no new meetings, the running ones stay where they are until they end."""
    node = await find_node(conn, ref)
    await conn.execute(Q.lifecycle_node_maintenance, node["id"], True)
    rows = await _status(conn, node)
    await audit.record(conn, actor, "node.drain", _label(node), None, {"meetings_left": rows[0]["meetings_left"]})
    return rows


async def node_drain_status(conn: asyncpg.Connection, ref: str) -> list[Row]:
    """The node with `meetings_left` (rows routed to it) and `drained` (in maintenance, none left)."""
    return await _status(conn, await find_node(conn, ref))


async def wait_drained(
    conn: asyncpg.Connection,
    ref: str,
    timeout: float | None = None,
    *,
    every: float = DRAIN_POLL_SECONDS,
    progress: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Read the node's meetings every `every` seconds until none is left (the poller deletes the rows of
    ended meetings); AdminError after `timeout` seconds, or when the node leaves maintenance meanwhile.
    `progress` gets the status row whenever the count changed. Outside a transaction: each read must see
    the poller's latest commit."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    shown = -1
    while True:
        rows = await node_drain_status(conn, ref)
        row = rows[0]
        label, left = f"{row['cluster']}/{row['slug']}", row["meetings_left"]
        if row["state"] != "maintenance":
            raise AdminError(f"node {label} left maintenance while draining ({left} meeting(s) left)")
        if left == 0:
            return rows
        if progress is not None and left != shown:
            progress(row)
            shown = left
        if deadline is not None and loop.time() >= deadline:
            raise AdminError(
                f"node {label} still hosts {left} meeting(s) after {timeout:g} s; it stays in maintenance"
            )
        pause = every if deadline is None else min(every, max(deadline - loop.time(), 0.0))
        await asyncio.sleep(pause)


# Cluster maintenance -----------------------------------------------------------------------


async def cluster_maintenance(conn: asyncpg.Connection, name: str, on: bool, actor: str) -> list[Row]:
    """Every node of the cluster in (on) or out of maintenance; returns the cluster's nodes."""
    name = V.check_value("name", V.NAME, name)
    if not isinstance(on, bool):
        raise ValueError(f"on: expected true or false, got {on!r}")
    cluster = await cluster_by_name(conn, name)
    changed = await conn.fetch(Q.lifecycle_cluster_maintenance, cluster["id"], on)
    rows = await node_list(conn, name)
    await audit.record(conn, actor, "cluster.maintenance", name, None,
                       {"on": on, "nodes": len(rows), "changed": len(changed)})
    return rows


# Panic -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PanicTarget:
    """The node a panic works on: what `node_panic_begin` hands to `node_panic_finish`."""

    node_id: int
    label: str  # CLUSTER/SLUG


@dataclass(slots=True)
class PanicMeeting:
    """One meeting of the node and what became of it; `callback` and `end` never hold a URL."""

    id: int
    nonce: uuid.UUID
    secret: str  # TENANT or TENANT-NNN
    meeting_id: str
    callback_url: str
    recorded: bool
    callback: str = "none"
    delivered: bool = False
    end: str = "not sent: timed out"
    # True: the panic deleted its row; False: gone already, ended meanwhile (the node's own end callback,
    # a poll) or moved to another node. Either way it no longer routes to this node.
    dropped: bool = False

    def row(self, label: str) -> Row:
        return {"node": label, "secret": self.secret, "meeting_id": self.meeting_id, "callback": self.callback,
                "end": self.end, "dropped": self.dropped}


async def node_panic_begin(conn: asyncpg.Connection, ref: str, actor: str) -> PanicTarget:
    """Step 1, inside the caller's transaction: the node goes into maintenance (committed before
    anything is sent, so re-creates go elsewhere)."""
    node = await find_node(conn, ref)
    await conn.execute(Q.lifecycle_node_maintenance, node["id"], True)
    meetings = await conn.fetchval(Q.admin_node_meeting_count, node["id"])
    await audit.record(conn, actor, "node.panic", _label(node), None, {"phase": "started", "meetings": meetings})
    return PanicTarget(node["id"], _label(node))


async def node_panic_finish(
    conn: asyncpg.Connection,
    target: PanicTarget,
    client: NodeClient,
    actor: str,
    *,
    settle: float = 0.0,
    timeout: float = PANIC_TIMEOUT,
    runtime: Runtime | None = None,
    notify: Callable[[str], None] | None = None,
) -> list[Row]:
    """Steps a-f of the module's docstring, on a connection outside any transaction; one row per meeting."""
    if conn.is_in_transaction():
        raise RuntimeError("node_panic_finish calls nodes and frontends: run it outside a transaction")
    if not await conn.fetchval(Q.lifecycle_panic_lock, target.node_id):
        raise AdminError(f"a panic of node {target.label} is already running")
    try:
        if runtime is not None:
            await runtime.refresh_directory()  # this process places nothing there from now on
        if settle > 0:
            if notify is not None:
                notify(f"node {target.label} is in maintenance; waiting {settle:g} s until every b3lb process "
                       "has seen that")
            await asyncio.sleep(settle)
        node_row = await conn.fetchrow(Q.lifecycle_node_target, target.node_id)
        if node_row is None:
            raise AdminError(f"node {target.label} was removed meanwhile")
        meetings = [_panic_meeting(row) for row in await conn.fetch(Q.lifecycle_node_meetings, target.node_id)]
        if notify is not None and meetings:
            notify(f"ending {len(meetings)} meeting(s) on {target.label}: end callbacks first, then 'end' on the node")
        await _run_bounded([m for m in meetings if m.callback_url], lambda m: _send_callback(client, m), timeout)
        delivered = [m for m in meetings if m.delivered]
        if delivered:
            await conn.execute(Q.lifecycle_callbacks_delivered, [m.id for m in delivered], [m.nonce for m in delivered])
        node = Node.from_row(node_row)
        algorithm = node_row["sha_algorithm"]
        await _run_bounded(meetings, lambda m: _send_end(client, node, algorithm, m), timeout)
        dropped = await _drop(conn, target, meetings, actor)
    finally:
        await conn.execute(Q.lifecycle_panic_unlock, target.node_id)
    if runtime is not None:
        _forget_in_memory(runtime, dropped)
    return [m.row(target.label) for m in meetings]


async def node_panic(
    conn: asyncpg.Connection,
    ref: str,
    client: NodeClient | None,
    actor: str,
    *,
    settle: float = 0.0,
    timeout: float = PANIC_TIMEOUT,
    runtime: Runtime | None = None,
) -> list[Row]:
    """Begin (its own transaction) and finish; `conn` must not be in a transaction. `client` None: the
    runtime's NodeClient. Give `settle` = api.cache_refresh_interval when other processes serve too."""
    if conn.is_in_transaction():
        raise RuntimeError("node_panic runs its own transactions: call it outside one")
    if client is None:
        if runtime is None:
            raise TypeError("node_panic needs a NodeClient or a runtime")
        client = runtime.nodes
    async with conn.transaction():
        target = await node_panic_begin(conn, ref, actor)
    return await node_panic_finish(conn, target, client, actor, settle=settle, timeout=timeout, runtime=runtime)


def _panic_meeting(row: asyncpg.Record) -> PanicMeeting:
    url = row["end_callback_url"]
    return PanicMeeting(id=row["id"], nonce=row["nonce"], secret=secret_label(row["tenant"], row["sub_id"]),
                        meeting_id=row["meeting_id"], callback_url=url, recorded=row["recorded"],
                        callback="not sent: timed out" if url else "none")


async def _run_bounded(items: Iterable[Item], work: Callable[[Item], Awaitable[None]], timeout: float) -> None:
    """`work` for every item, PANIC_CONCURRENCY at a time, all within `timeout` seconds; what has not
    finished by then is cancelled (its item keeps its 'not sent' outcome)."""
    gate = asyncio.Semaphore(PANIC_CONCURRENCY)

    async def one(item: Item) -> None:
        async with gate:
            await work(item)

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _send_callback(client: NodeClient, meeting: PanicMeeting) -> None:
    """The frontend's end callback, as the relay sends it: one GET through the URL guard; any answer
    below 500 counts as delivered (b3lb/callbacks.py `relay`)."""
    from b3lb.callbacks import RELAY_TIMEOUT, relay_url
    from b3lb.nodeclient import NodeRequestError
    from b3lb.urlguard import URLRefused, loggable

    marks = "true" if meeting.recorded else "false"
    url = relay_url(meeting.callback_url, meeting.meeting_id, marks)
    try:
        code = await client.fetch_callback(url, timeout=RELAY_TIMEOUT)
    except URLRefused as exc:
        meeting.callback = f"refused: {exc}"
    except NodeRequestError as exc:
        meeting.callback = f"failed: {exc}"
    except Exception as exc:  # a bug costs this callback, not the panic
        log.exception("panic: end callback for %s failed unexpectedly", meeting.meeting_id)
        meeting.callback = f"failed: internal error {type(exc).__name__}"
    else:
        meeting.delivered = code < 500
        meeting.callback = f"sent (HTTP {code})" if meeting.delivered else f"failed: HTTP {code}"
    if not meeting.delivered:  # info: the outcome is in the result rows; a CLI prints no log lines
        log.info("panic: end callback of %s to %s: %s", meeting.meeting_id, loggable(meeting.callback_url),
                    meeting.callback)


async def _send_end(client: NodeClient, node: Node, algorithm: str, meeting: PanicMeeting) -> None:
    """`end` on the node, signed as b3lb/api/forward.py signs every call (node secret, cluster algorithm)."""
    from b3lb.nodeclient import NodeRequestError

    url = f"{node.api_url}end?{signed_query('end', [('meetingID', meeting.meeting_id)], node.secret, algorithm)}"
    try:
        response = await client.fetch(url)
    except NodeRequestError as exc:
        meeting.end = f"failed: {exc}"
        return
    except Exception as exc:  # a bug costs this meeting's end, not the panic
        log.exception("panic: end of %s failed unexpectedly", meeting.meeting_id)
        meeting.end = f"failed: internal error {type(exc).__name__}"
        return
    body = response.body
    key = _MESSAGE_KEY.search(body, 0, 8192)
    message_key = key.group(1).decode("ascii", "replace") if key else ""
    if response.code == 200 and b"<returncode>SUCCESS</returncode>" in body[:4096]:
        meeting.end = "ended"
    elif response.code == 200 and message_key == "notFound":
        meeting.end = "not running"  # already over: nothing left to end
    else:
        meeting.end = f"failed: {message_key or f'HTTP {response.code}'}"


async def _drop(
    conn: asyncpg.Connection, target: PanicTarget, meetings: list[PanicMeeting], actor: str
) -> list[asyncpg.Record]:
    """Step f: the rows out, the audit row in, one transaction."""
    async with conn.transaction():
        dropped = await conn.fetch(Q.lifecycle_panic_drop, target.node_id, [m.id for m in meetings],
                                   [m.nonce for m in meetings])
        gone = {row["id"] for row in dropped}
        for meeting in meetings:
            meeting.dropped = meeting.id in gone
        detail = {
            "phase": "finished",
            "meetings": len(meetings),
            "callbacks_sent": sum(m.delivered for m in meetings),
            "callbacks_failed": sum(bool(m.callback_url) and not m.delivered for m in meetings),
            "ends_failed": sum(m.end not in ("ended", "not running") for m in meetings),
            "dropped": len(dropped),
        }
        await audit.record(conn, actor, "node.panic", target.label, None, detail)
    return dropped


def _forget_in_memory(runtime: Runtime, dropped: list[asyncpg.Record]) -> None:
    """This process stops routing the dropped meetings at once; other instances hear it through Redis."""
    for row in dropped:
        ref = runtime.meetings.by_id.get(row["id"])
        if ref is not None and ref.nonce == row["nonce"]:
            runtime.meetings.remove(ref)
            runtime.announce("ended", ref)
