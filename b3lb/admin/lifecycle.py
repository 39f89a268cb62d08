"""Taking nodes out of service: drain, panic and cluster-wide maintenance (the CLI, the admin API and
the dashboard share these).

Two switches keep new meetings away from a node: its own `node.maintenance` and its cluster's
`cluster.maintenance` (sql/0011). The balancer gives a node with either no new meeting (load -2,
skipped by `LoadTable.choose`; b3lb/balancer.py `NodeEntry.in_maintenance`), while everything
addressed to a meeting already routed there still goes there: `join` and the pass-through calls
refuse only nodes in error (b3lb/api/join.py `redirect`, b3lb/api/calls.py `owner`), and a `create`
of a routed meeting reaches its node unless that node is in error (b3lb/api/create.py). Serving
processes read both flags at their next directory refresh (`api.cache_refresh_interval`).

- **Drain** (`node_drain`): the node's own maintenance on. The meetings end by themselves; the
  poller, which keeps polling nodes in maintenance, deletes each ended meeting's row.
  `node_drain_status` counts the rows left (`meetings_left`), `wait_drained` waits for none and
  gives up at once, saying so, when the node goes into error: the poller cannot see the meetings of
  a node it cannot reach end, so their rows would stay for ever (a panic drops them).
- **Panic** (`node_panic`): the node's meetings are ended after their frontends were told, so that
  the frontends re-create them elsewhere. Network calls are never made inside a transaction:
  1. `node_panic_begin`, inside the caller's transaction: takes the node's panic lock (a session
     advisory lock of the connection: two panics of one node never run side by side, and
     `panic_state` sees one running), maintenance on and the audit row, committed before anything
     is sent.
  2. `node_panic_finish`, outside any transaction, on the same connection:
     a. waits `settle` seconds, so that every serving process has seen the maintenance (it reloads
        its node table every `api.cache_refresh_interval`) and places nothing more there;
     b. one transaction: deletes every routing row of the node, keeps the rows with an end
        callback in `meeting_ended` (what the relay of b3lb/callbacks.py uses) and counts the
        durations. The rows go FIRST: a frontend told in step d re-creates the meeting at once,
        and a create of a meeting still routed to a node in maintenance would go back to that node
        (b3lb/api/create.py moves only meetings of nodes in error), where step f would end it;
     c. this process forgets the meetings at once and tells other instances through Redis (when
        configured, and when the caller passes its `runtime`); then waits `settle` seconds again,
        so that processes without Redis have read the deletions too (meeting refresh);
     d. calls every frontend's end callback (`meeting.end_callback_url`) as the relay does (same
        URL form, `NodeClient.fetch_callback`, through the URL guard of b3lb/urlguard.py): one GET
        each, all at once (bounded), within `timeout` seconds;
     e. deletes the `meeting_ended` rows of the delivered ones (one statement), so that the node's
        own end callback, which step f brings, relays nothing a second time; the undelivered ones
        stay there and that callback relays them with retries, as after any end;
     f. sends `end` for each meeting (from the list of step b) to the node
        (b3lb/api/node_end.py), within `timeout` seconds: a dead node costs at most that;
     g. the audit row with what failed, then the lock is released.
  A crash after step b leaves the node in maintenance without routing rows; meetings not yet
  ended keep running on the node unrouted until they end (the node's end callback then relays the
  undelivered callbacks) or the operator ends them on the node. Callbacks are sent at least once.
  `recordingmarks` of a callback is `true` when the node last reported the meeting as recorded
  (b3lb cannot know whether anybody pressed record; the recording, if any, still arrives through
  the ready callback). The admin API runs steps 2a-g in a background task of the serving process
  (`node_panic_start`) and answers 202 at once; `node_drain_status` reports the panic's state.
- **Cluster maintenance** (`cluster_maintenance`): the cluster's own switch. Off restores each
  node's own state: a node drained or panicked by itself stays in maintenance.

Every write records an audit row (b3lb/admin/audit.py) in its transaction with the caller's actor.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import orjson

from b3lb import validation as V
from b3lb.admin import audit
from b3lb.admin.common import AdminError, NotFound, Row, cluster_by_name, find_node
from b3lb.admin.fleet import node_list
from b3lb.db import Q
from b3lb.models import Node, secret_label

if TYPE_CHECKING:  # imported where used: every `b3lb` command loads this module, a panic alone needs them
    from b3lb.api.node_end import NodeAddress
    from b3lb.nodeclient import NodeClient
    from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.admin.lifecycle")

DRAIN_POLL_SECONDS = 1.0  # how often wait_drained reads the meetings left
DRAIN_TIMEOUT = V.Whole(1, 7 * 86400)  # `node drain --wait --timeout SECONDS`
PANIC_TIMEOUT = 30.0  # seconds for all end callbacks, and again for all `end` calls
PANIC_CONCURRENCY = 20  # callbacks or `end` calls in flight at once
PANIC_FAILURES_KEPT = 50  # meetings whose callback or end failed, listed in the audit row
Item = TypeVar("Item")


# Drain -------------------------------------------------------------------------------------


def _label(node: asyncpg.Record) -> str:
    return f"{node['cluster']}/{node['slug']}"


async def _status(conn: asyncpg.Connection, node: asyncpg.Record) -> list[Row]:
    """The node as `node list` shows it, plus its two maintenance switches, whether it is in error,
    the meetings still routed to it, and `drained` (in maintenance, none left)."""
    shown = [row for row in await node_list(conn, node["cluster"]) if row["slug"] == node["slug"]]
    flags = await conn.fetchrow(Q.lifecycle_node_flags, node["id"])
    if flags is None or not shown:
        raise NotFound(f"no node {_label(node)!r}")
    left = await conn.fetchval(Q.admin_node_meeting_count, node["id"])
    in_maintenance = flags["node_maintenance"] or flags["cluster_maintenance"]
    return [{**row, "node_maintenance": flags["node_maintenance"], "cluster_maintenance": flags["cluster_maintenance"],
             "error": flags["has_errors"], "meetings_left": left, "drained": in_maintenance and left == 0}
            for row in shown]


async def node_drain(conn: asyncpg.Connection, ref: str, actor: str) -> list[Row]:
    """Maintenance on: no new meetings, the running ones stay where they are until they end."""
    node = await find_node(conn, ref)
    await conn.execute(Q.lifecycle_node_maintenance, node["id"], True)
    rows = await _status(conn, node)
    await audit.record(conn, actor, "node.drain", _label(node), None, {"meetings_left": rows[0]["meetings_left"]})
    return rows


async def node_drain_status(conn: asyncpg.Connection, ref: str) -> list[Row]:
    """The node with `meetings_left`, `drained`, and its last panic (`panic_state`): the admin API's
    `GET .../drain`, which a panic's 202 answer points to."""
    node = await find_node(conn, ref)
    rows = await _status(conn, node)
    panic = await panic_state(conn, node["id"], _label(node))
    return [{**row, **panic} for row in rows]


async def wait_drained(
    conn: asyncpg.Connection,
    ref: str,
    timeout: float | None = None,
    *,
    every: float = DRAIN_POLL_SECONDS,
    progress: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Read the node's meetings every `every` seconds until none is left (the poller deletes the rows of
    ended meetings). AdminError after `timeout` seconds, when the node leaves maintenance meanwhile, or
    when it is in error (its rows would never go). `progress` gets the status row whenever the count
    changed. Outside a transaction: each read must see the poller's latest commit."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    node = await find_node(conn, ref)
    shown = -1
    while True:
        rows = await _status(conn, node)
        row = rows[0]
        label, left = f"{row['cluster']}/{row['slug']}", row["meetings_left"]
        if not (row["node_maintenance"] or row["cluster_maintenance"]):
            raise AdminError(f"node {label} left maintenance while draining ({left} meeting(s) left)")
        if left == 0:
            return rows
        if row["error"]:
            raise AdminError(f"node {label} is in error; use node panic: the poller cannot see its {left} "
                             "meeting(s) end while it does not answer")
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
    """The cluster's own maintenance switch; returns the cluster's nodes as `node list` shows them
    (state `maintenance` while the cluster is in maintenance; off, each node's own state again)."""
    name = V.check_value("name", V.NAME, name)
    if not isinstance(on, bool):
        raise ValueError(f"on: expected true or false, got {on!r}")
    cluster = await cluster_by_name(conn, name)
    changed = await conn.fetchval(Q.lifecycle_cluster_maintenance, cluster["id"], on)
    rows = [{**row, "cluster_maintenance": on} for row in await node_list(conn, name)]
    await audit.record(conn, actor, "cluster.maintenance", name, None,
                       {"on": on, "nodes": len(rows), "changed": changed is not None})
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

    @property
    def failed(self) -> bool:
        return (bool(self.callback_url) and not self.delivered) or self.end not in ("ended", "not running")

    def row(self, label: str) -> Row:
        # dropped: its routing row went before anything was sent (step b), whatever failed later.
        return {"node": label, "secret": self.secret, "meeting_id": self.meeting_id, "callback": self.callback,
                "end": self.end, "dropped": True}


async def node_panic_begin(conn: asyncpg.Connection, ref: str, actor: str) -> PanicTarget:
    """Step 1, inside the caller's transaction: the node's panic lock (held by `conn`'s session until
    `node_panic_finish` releases it; if the transaction fails instead, the caller must release it,
    see `_unlock_all`: the serving process's pool keeps session state when a connection goes back),
    maintenance on, the audit row."""
    node = await find_node(conn, ref)
    if not await conn.fetchval(Q.lifecycle_panic_lock, node["id"]):
        raise AdminError(f"a panic of node {_label(node)} is already running")
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
    """Steps 2a-g of the module's docstring on the connection that began it (it holds the panic lock),
    outside any transaction; one row per meeting. The lock is released whatever happens."""
    if conn.is_in_transaction():
        raise RuntimeError("node_panic_finish calls nodes and frontends: run it outside a transaction")
    try:
        meetings = await _panic_steps(conn, target, client, actor, settle, timeout, runtime, notify)
    except Exception as exc:
        await _audit_failure(conn, target, actor, exc)
        raise
    finally:
        await conn.execute(Q.lifecycle_panic_unlock, target.node_id)
    return [m.row(target.label) for m in meetings]


async def _panic_steps(
    conn: asyncpg.Connection, target: PanicTarget, client: NodeClient, actor: str, settle: float, timeout: float,
    runtime: Runtime | None, notify: Callable[[str], None] | None,
) -> list[PanicMeeting]:
    from b3lb.api.node_end import NodeAddress

    if runtime is not None:
        await runtime.refresh_directory()  # this process places nothing there from now on
    if settle > 0:
        _say(notify, f"node {target.label} is in maintenance; waiting {settle:g} s until every b3lb process "
                     "has seen that")
        await asyncio.sleep(settle)
    node_row = await conn.fetchrow(Q.lifecycle_node_target, target.node_id)
    if node_row is None:
        raise NotFound(f"node {target.label} was removed meanwhile")
    async with conn.transaction():
        meetings = [_panic_meeting(row) for row in await conn.fetch(Q.lifecycle_panic_take, target.node_id)]
    if runtime is not None:
        _forget_in_memory(runtime, meetings)
    if meetings and settle > 0:
        _say(notify, f"{len(meetings)} meeting(s) of {target.label} no longer routed; waiting {settle:g} s until "
                     "every b3lb process has seen that")
        await asyncio.sleep(settle)
    if meetings:
        _say(notify, f"ending {len(meetings)} meeting(s) on {target.label}: end callbacks first, then 'end' "
                     "on the node")
    await _run_bounded([m for m in meetings if m.callback_url], lambda m: _send_callback(client, m), timeout)
    delivered = [m.nonce for m in meetings if m.delivered]
    if delivered:
        await conn.execute(Q.lifecycle_callbacks_delivered, delivered)
    address = NodeAddress.of_node(Node.from_row(node_row), node_row["sha_algorithm"])
    await _run_bounded(meetings, lambda m: _send_end(client, address, m), timeout)
    async with conn.transaction():
        await audit.record(conn, actor, "node.panic", target.label, None, _finished(meetings))
    return meetings


def _say(notify: Callable[[str], None] | None, text: str) -> None:
    if notify is not None:
        notify(text)


def _finished(meetings: list[PanicMeeting]) -> dict[str, Any]:
    """The audit row's detail of a finished panic: counts, and the meetings where something failed."""
    failed = [m for m in meetings if m.failed]
    return {
        "phase": "finished",
        "meetings": len(meetings),
        "callbacks_sent": sum(m.delivered for m in meetings),
        "callbacks_failed": sum(bool(m.callback_url) and not m.delivered for m in meetings),
        "ends_failed": sum(m.end not in ("ended", "not running") for m in meetings),
        "dropped": len(meetings),  # routing rows step b deleted (each meeting here is one)
        "failures": [{"secret": m.secret, "meeting_id": m.meeting_id, "callback": m.callback, "end": m.end}
                     for m in failed[:PANIC_FAILURES_KEPT]],
    }


async def _audit_failure(conn: asyncpg.Connection, target: PanicTarget, actor: str, exc: Exception) -> None:
    """A panic that stopped half-way says so in the audit log (and so in `panic_state`)."""
    try:
        if conn.is_in_transaction():
            return  # cancelled inside a transaction: asyncpg rolls it back; nothing can be written now
        async with conn.transaction():
            await audit.record(conn, actor, "node.panic", target.label, None,
                               {"phase": "failed", "error": str(exc)[:300] or type(exc).__name__})
    except Exception as failure:  # the database is what failed: the log must do
        log.warning("panic of %s failed (%s) and could not be logged: %s", target.label, exc, failure)


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
    try:
        async with conn.transaction():
            target = await node_panic_begin(conn, ref, actor)
    except BaseException:
        if not await _unlock_all(conn):
            conn.terminate()
        raise
    return await node_panic_finish(conn, target, client, actor, settle=settle, timeout=timeout, runtime=runtime)


async def node_panic_start(runtime: Runtime, ref: str, actor: str, *, settle: float) -> list[Row]:
    """For a serving process (the admin API): step 1 now, steps 2a-g in a background task of the
    runtime on the same pooled connection (it holds the lock). Returns the node's drain status, its
    `panic_state` "running"."""
    conn = await runtime.pool.acquire()
    try:
        async with conn.transaction():
            target = await node_panic_begin(conn, ref, actor)
        rows = await node_drain_status(conn, target.label)
    except BaseException:
        if not await _unlock_all(conn):
            conn.terminate()
        await runtime.pool.release(conn)
        raise
    runtime.add_task(f"node panic {target.label}", _panic_task(runtime, conn, target, actor, settle))
    return rows


async def _panic_task(runtime: Runtime, conn: asyncpg.Connection, target: PanicTarget, actor: str,
                      settle: float) -> None:
    try:
        await node_panic_finish(conn, target, runtime.nodes, actor, settle=settle, runtime=runtime)
    except AdminError as exc:
        log.warning("panic of %s stopped: %s", target.label, exc)
    except Exception:  # in the audit log already; the traceback for the operator
        log.exception("panic of %s failed", target.label)
    finally:
        if not await _unlock_all(conn):  # the lock must not go back to the pool with the connection
            conn.terminate()
        await runtime.pool.release(conn)


async def _unlock_all(conn: asyncpg.Connection) -> bool:
    """The panic lock, if this session still holds it, goes (after a failed begin, or after a finish
    that could not release it). False when that failed: close the connection instead."""
    if conn.is_closed():
        return True
    try:
        await conn.execute(Q.lifecycle_panic_unlock_all)
    except Exception as exc:  # noqa: BLE001 - whatever it was, the caller closes the connection
        log.debug("panic lock release failed: %s", exc)
        return False
    return True


async def panic_state(conn: asyncpg.Connection, node_id: int, label: str) -> Row:
    """The node's last panic: `panic_state` none, running, finished, failed, or interrupted (began but
    never finished: the process stopped; a new panic finishes the job), with its time and detail."""
    running = await conn.fetchval(Q.lifecycle_panic_running, node_id)
    last = await conn.fetchrow(Q.lifecycle_panic_last, label)
    if last is None:
        return {"panic_state": "running" if running else "none", "panic_at": None, "panic_detail": None}
    detail = orjson.loads(last["detail"])
    phase = detail.get("phase")
    state = "running" if running else phase if phase in ("finished", "failed") else "interrupted"
    return {"panic_state": state, "panic_at": last["at"], "panic_detail": detail}


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


async def _send_end(client: NodeClient, node: NodeAddress, meeting: PanicMeeting) -> None:
    """`end` on the node (b3lb/api/node_end.py, as the admin API's meeting end sends it)."""
    from b3lb.api.node_end import end_on_node

    try:
        ended = await end_on_node(client, node, meeting.meeting_id)
    except Exception as exc:  # a bug costs this meeting's end, not the panic
        log.exception("panic: end of %s failed unexpectedly", meeting.meeting_id)
        meeting.end = f"failed: internal error {type(exc).__name__}"
        return
    meeting.end = ended.describe()


def _forget_in_memory(runtime: Runtime, meetings: list[PanicMeeting]) -> None:
    """This process stops routing the dropped meetings at once; other instances hear it through Redis."""
    for meeting in meetings:
        ref = runtime.meetings.by_id.get(meeting.id)
        if ref is not None and ref.nonce == meeting.nonce:
            runtime.meetings.remove(ref)
            runtime.announce("ended", ref)
