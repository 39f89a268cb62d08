"""Failover: a meeting whose node is in error is re-created on a healthy node (issue 13, item 5).

A join of such a meeting (b3lb/api/join.py) comes here; a create of it restarts the room with its
own parameters (b3lb/api/create.py), through the same conditional move of the row (create.move_row).
The re-create sends the parameters the original create stored (b3lb/api/stored_create.py) through
the same rewriting as a create (rules, logo, record flags, b3lb's end callback and record-set tag
for the new nonce, the tenant's slide), without passwords: the node makes up its own, and a join's
`password=` is sent as the `role` it stood for (BBB 2.4+), checked against the stored keyed hashes.

Once per meeting: in this process every join of it awaits one task (MeetingTable.failing_over);
across processes the row's move is conditional on the nonce the mover saw, so exactly one wins. The
winner's row says RECREATING until its create on the new node answered; the others read the row
every FOLLOW_STEP seconds meanwhile and then send their users to the winner's node. A claim older
than the failover's longest run (its process died) is taken over by the next join. When no node
takes the meeting, its row goes back to the node in error as it was: nothing is lost, and the next
join tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg

from b3lb.api import create as create_call
from b3lb.api.forward import NodeOutcome, call_node, node_suspected, succeeded
from b3lb.api.stored_create import StoredCreate
from b3lb.api.xml import failed
from b3lb.balancer import NodeEntry
from b3lb.db import Q
from b3lb.meetings import RECREATED, RECREATING, MeetingRef
from b3lb.runtime import Runtime
from b3lb.tenancy import SecretContext

log = logging.getLogger("b3lb.failover")

FOLLOW_STEP = 0.05  # seconds between two reads of a row another process is re-creating
NO_NODE_LEFT = ("nodeUnavailable", "The BigBlueButton server hosting this meeting is unavailable and no other "
                "server could take the meeting over. Please try again shortly.")
UNAVAILABLE = failed(*NO_NODE_LEFT)

Placement = tuple[MeetingRef, NodeEntry]


def claim_lifetime(runtime: Runtime) -> float:
    """Seconds a failover's claim may last before another process takes it over: the longest a
    failover runs (a create per attempt, each at most the node request timeout) and some slack."""
    api = runtime.config.api
    return api.create_attempts * (api.node_request_timeout + 1.0) + 5.0


async def fail_over(runtime: Runtime, ctx: SecretContext, ref: MeetingRef) -> Placement | None:
    """The meeting's placement once joins can go there: moved to a healthy node and re-created there
    if its node is in error, or as another process's failover left it. None: no node could take it
    (its row is as it was) or it is gone (then it is no longer in the routing table either)."""
    key = (ref.secret_id, ref.meeting_id)
    table = runtime.meetings.failing_over
    task = table.get(key)
    if task is None:
        task = asyncio.get_running_loop().create_task(_settle(runtime, ctx, ref), name="failover")
        table[key] = task
        task.add_done_callback(lambda done: _finished(table, key, done))
    # shielded: a join that gives up (shutdown) must not cancel the failover the others wait for
    result: Placement | None = await asyncio.shield(task)
    return result


def _finished(table: dict[tuple[int, str], asyncio.Task[Any]], key: tuple[int, str], task: asyncio.Task[Any]) -> None:
    if table.get(key) is task:
        del table[key]
    if not task.cancelled():
        task.exception()  # retrieved: the joins that awaited it report it


async def current_placement(runtime: Runtime, ref: MeetingRef) -> Placement | None:
    """For calls other than join (getMeetingInfo, isMeetingRunning, end, ...) of a meeting whose
    node is in error here: where a failover (in this process: awaited; elsewhere: one read of the
    row) has put it, else None (the meeting is unknown, spec 2.1). Never starts a failover."""
    task = runtime.meetings.failing_over.get((ref.secret_id, ref.meeting_id))
    if task is not None:
        with contextlib.suppress(Exception):
            placed: Placement | None = await asyncio.shield(task)
            return placed
    return await _placed_elsewhere(runtime, ref)


async def _placed_elsewhere(runtime: Runtime, ref: MeetingRef) -> Placement | None:
    """The row's placement when it is on a healthy node and not being re-created (one read)."""
    row = await runtime.pool.fetchrow(Q.meeting_failover_state, ref.id, claim_lifetime(runtime))
    if row is None or row["failover_state"] == RECREATING:
        return None
    entry = runtime.loads.nodes.get(row["node_id"])
    if entry is None or entry.node.has_errors:
        return None
    return _adopt(runtime, ref, row), entry


async def _settle(runtime: Runtime, ctx: SecretContext, ref: MeetingRef) -> Placement | None:
    entry = runtime.loads.nodes.get(ref.node_id)
    if entry is not None and not entry.node.has_errors:
        # a healthy node: being re-created there (by another process), else nothing to do
        return await _follow(runtime, ctx, ref) if ref.failover_state == RECREATING else (ref, entry)
    exclude = runtime.meetings.nodes_hosting(ref.meeting_id, ref.secret_id)
    exclude.add(ref.node_id)
    target = runtime.loads.choose(ctx.tenant.cluster_group_id, dict.fromkeys(exclude))
    if target is None:  # unless another process moved it meanwhile (to a node now in maintenance, say)
        placed = await _placed_elsewhere(runtime, ref)
        if placed is None:
            log.info("meeting %s: its node is in error and no other node can take it", ref.id)
        return placed
    row = await create_call.move_row(runtime, ref, target, failover=True)
    if row is None:  # another process (or a create) moved it first: go where it went
        return await _follow(runtime, ctx, ref)
    return await _recreate(runtime, ctx, ref, row, target)


async def _follow(runtime: Runtime, ctx: SecretContext, ref: MeetingRef) -> Placement | None:
    """Wait for the failover another process is running (reading the row), then join its result;
    a claim that outlived its run is taken over."""
    lifetime = claim_lifetime(runtime)
    deadline = time.monotonic() + lifetime + 1.0
    while True:
        row = await runtime.pool.fetchrow(Q.meeting_failover_state, ref.id, lifetime)
        if row is None:  # ended meanwhile
            runtime.meetings.remove(ref)
            return None
        current = _adopt(runtime, ref, row)
        entry = runtime.loads.nodes.get(current.node_id)
        if entry is None or entry.node.has_errors:
            return None  # back on a node in error (no node took it): the next join tries again
        if current.failover_state != RECREATING:
            return current, entry
        if row["claim_stale"]:
            moved = await create_call.move_row(runtime, current, entry, failover=True)
            if moved is not None:
                log.info("meeting %s: taking over a failover that did not finish", current.id)
                return await _recreate(runtime, ctx, current, moved, entry)
            continue  # another join took it over: follow that one
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(FOLLOW_STEP)


def _adopt(runtime: Runtime, ref: MeetingRef, row: asyncpg.Record) -> MeetingRef:
    """The record for the row as it is now, in the routing table."""
    if (ref.node_id, ref.nonce) == (row["node_id"], row["nonce"]):
        ref.failover_state = max(ref.failover_state, row["failover_state"])
        current = ref
    else:
        current = MeetingRef.from_row(row)
    if runtime.meetings.get(current.secret_id, current.meeting_id) is not current:
        runtime.meetings.add(current)
    return current


async def _recreate(
    runtime: Runtime, ctx: SecretContext, previous: MeetingRef, row: asyncpg.Record, target: NodeEntry
) -> Placement | None:
    """This process won the row: create the meeting on `target`, then on the next nodes if that
    one certainly fails; when none takes it, the row goes back to `previous`."""
    stored = StoredCreate.decode(row["create_params"], row["meeting_id"], row["meeting_name"])
    moved = MeetingRef.from_row(row)
    moved.passwords = stored.passwords
    runtime.meetings.add(moved)  # RECREATING: joins of it here wait for this task
    runtime.loads.placed(target.node.id)
    tried = runtime.meetings.nodes_hosting(moved.meeting_id, moved.secret_id) | {previous.node_id}
    attempts = runtime.config.api.create_attempts
    for attempt in range(1, attempts + 1):
        tried.add(target.node.id)
        outcome = await _create_on(runtime, ctx, moved, target, stored, row)
        if outcome.verdict == "ok" and succeeded(outcome.result):
            await _recreated(runtime, moved)
            target.create_succeeded()
            log.info("meeting %s failed over from node %s to node %s", moved.id, _slug(runtime, previous.node_id),
                     target.node.slug)
            return moved, target
        if outcome.verdict == "uncertain":  # the node may run it now: its next poll decides (b3lb/poller.py)
            node_suspected(runtime, target, "create", outcome.reason)
            moved.uncertain_since = time.monotonic()
            await _recreated(runtime, moved)
            return None
        if outcome.verdict == "node_fault":
            node_suspected(runtime, target, "create", outcome.reason)
            target.create_failed()
        else:  # refused (a FAILED answer) or never sent (no free connection): the next node may do
            log.warning("meeting %s: re-create on node %s failed: %s", moved.id, target.node.slug,
                        outcome.reason or "a FAILED answer")
        await _unrecorded(runtime, ctx, moved)
        following = runtime.loads.choose(ctx.tenant.cluster_group_id, dict.fromkeys(tried))
        if following is None or attempt == attempts:
            break
        next_row = await create_call.move_row(runtime, moved, following, failover=True)
        runtime.loads.unplaced(target.node.id)
        if next_row is None:  # not ours any more (cannot happen while our claim is fresh): follow it
            return await _follow(runtime, ctx, moved)
        row, target = next_row, following
        moved = MeetingRef.from_row(row)
        moved.passwords = stored.passwords
        runtime.meetings.add(moved)
        runtime.loads.placed(target.node.id)
    await runtime.pool.execute(Q.meeting_failover_revert, moved.id, moved.nonce, previous.node_id, previous.nonce,
                               previous.failover_state)
    runtime.loads.unplaced(target.node.id)
    runtime.meetings.add(previous)
    log.warning("meeting %s: no node could take it over; it stays on node %s", moved.id,
                _slug(runtime, previous.node_id))
    return None


async def _create_on(
    runtime: Runtime, ctx: SecretContext, moved: MeetingRef, target: NodeEntry, stored: StoredCreate,
    row: asyncpg.Record,
) -> NodeOutcome:
    """The stored create, rewritten for the new nonce exactly as a create is, sent to `target`."""
    if ctx.recording_enabled:  # the old nonce's set stays: the old node may still upload what it recorded
        await create_call.open_record_set(runtime, ctx, moved, row["meeting_name"], row["end_callback_url"],
                                          row["recording_ready_url"])
    params = create_call._rewrite(runtime, ctx, stored.params, moved)
    if stored.body is not None:
        body: create_call.RequestBody = ("POST", stored.body, stored.content_type)
    elif ctx.assets.slide and not stored.posted:
        body = await create_call.slide_request(runtime, ctx)
    else:
        body = create_call.PLAIN_GET
    moved.creating += 1  # no poll drops it while its create is under way
    try:
        return await call_node(runtime, target, "create", params, method=body[0], body=body[1], content_type=body[2])
    finally:
        moved.creating -= 1


async def _recreated(runtime: Runtime, moved: MeetingRef) -> None:
    await runtime.pool.execute(Q.meeting_recreated, moved.id, moved.nonce)
    moved.failover_state = RECREATED
    moved.seen_at = time.monotonic()  # the grace against racing polls starts now
    runtime.announce("created", moved)  # other instances route joins there at once


async def _unrecorded(runtime: Runtime, ctx: SecretContext, moved: MeetingRef) -> None:
    """The set opened for a create that did not happen: nothing will ever be uploaded for it."""
    if ctx.recording_enabled:
        try:
            await runtime.pool.execute(Q.record_set_unrecorded, moved.nonce, moved.meeting_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("cannot drop the record set of meeting %s's failed re-create: %s", moved.id, exc)


def _slug(runtime: Runtime, node_id: int) -> str:
    entry = runtime.loads.nodes.get(node_id)
    return entry.node.slug if entry is not None else str(node_id)
