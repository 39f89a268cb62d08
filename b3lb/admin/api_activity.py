"""Admin API: meetings (list, where, end), recordings (list, show, delete, rerender), tokens, audit log.

No answer and no audit row holds a meeting's nonce (it authorises the node's end callback and
recording upload): meetings are named by meetingID and secret, record sets by their public_id.

`meeting end` ends the meeting on its node with BBB's own `end` call (b3lb/api/node_end.py, signed
with the node's secret, shared with a node panic) and then drops the routing row: `meeting_end` in
the database with the audit row in one transaction, then out of this process's table and announced
to other instances.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from b3lb import validation as V
from b3lb.admin import audit, tokens
from b3lb.admin import meetings as admin_meeting
from b3lb.admin import recordings as admin_recording
from b3lb.admin.api_core import ApiFailure, Call, Endpoint, Field, Operation, parse_field
from b3lb.admin.common import AdminError, NotFound, Row
from b3lb.api.forward import node_suspected
from b3lb.api.node_end import NodeAddress, end_on_node
from b3lb.db import Q
from b3lb.models import secret_label
from b3lb.outage import describe
from b3lb.recordings.storage import StorageError

AUDIT_LIMIT = V.Whole(1, audit.MAX_LIST)


def _tenant_of_label(label: str) -> str:
    return label.partition("-")[0]


# Meetings ------------------------------------------------------------------------------------


async def meeting_list(call: Call) -> list[Row]:
    async with call.read() as conn:
        return await admin_meeting.meeting_list(conn, call.listed_tenant())


async def meeting_where(call: Call) -> list[Row]:
    meeting_id = call.query("meeting_id")
    if meeting_id is None:
        raise ValueError("meeting_id: required")
    async with call.read() as conn:
        rows = await admin_meeting.meeting_where(conn, meeting_id)
    rows = [row for row in rows if call.principal.sees_tenant(_tenant_of_label(row["secret"]))]
    if not rows:
        raise NotFound(f"no meeting with ID {meeting_id!r}")
    return rows


async def _meeting_key(call: Call, meeting_id: str) -> tuple[int, str, int]:
    """(secret row id, tenant, sub-id) of the one meeting the body means."""
    wanted = call.secret(call.body["secret"]) if call.body.get("secret") is not None else None
    async with call.read() as conn:
        rows = await conn.fetch(Q.api_meeting_key, meeting_id, call.principal.tenant)
    rows = [row for row in rows if wanted is None or (row["tenant"], row["sub_id"]) == wanted]
    if not rows:
        raise NotFound(f"no meeting with ID {meeting_id!r}")
    if len(rows) > 1:
        labels = ", ".join(secret_label(row["tenant"], row["sub_id"]) for row in rows)
        raise ValueError(f"secret: meeting ID {meeting_id!r} is used by {labels}: name the secret")
    return rows[0]["secret_id"], rows[0]["tenant"], rows[0]["sub_id"]


async def meeting_end(call: Call) -> Any:
    """`end` on the meeting's node (b3lb/api/node_end.py, as a panic sends it), then its route out."""
    runtime = call.runtime
    meeting_id = V.check_value("meeting_id", V.MEETING_ID, call.body["meeting_id"])
    secret_id, slug, sub_id = await _meeting_key(call, meeting_id)
    ref = await runtime.lookup_meeting(secret_id, meeting_id)
    if ref is None:
        raise NotFound(f"no meeting with ID {meeting_id!r}")
    entry = runtime.loads.nodes.get(ref.node_id)
    if entry is None:
        raise AdminError(f"meeting {meeting_id!r} is on a node this process does not know yet: try again")
    node = f"{entry.cluster.name}/{entry.node.slug}"
    ended = await end_on_node(runtime.nodes, NodeAddress.of_entry(entry), meeting_id)
    if ended.node_failed:
        node_suspected(runtime, entry, "end", ended.outcome.reason)
        raise ApiFailure(502, "node_failed", f"node {node} did not end the meeting: {ended.outcome.reason}")
    if not ended.gone:  # notFound counts as gone: the node no longer has it, the route is stale
        raise ApiFailure(409, "node_refused", f"node {node} refused to end the meeting: {ended.answer}")
    # The node's end cannot be rolled back, so it comes first; then the row and the audit row in one
    # transaction, and only once that committed does this process forget the meeting and tell the
    # others. Should the transaction fail, memory and table still agree (the route stays everywhere)
    # and the answer says so: the poller drops the row when its next poll finds the meeting gone from
    # the node, or a repeated end (notFound) does.
    label = secret_label(slug, sub_id)
    try:
        async with call.write("meeting.end", f"{label}/{meeting_id}", slug,
                              {"node": node, "answer": ended.answer}) as conn:
            seconds = await conn.fetchval(Q.meeting_end, ref.id)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        logging.getLogger("b3lb.admin.api").warning("meeting %s ended on node %s but not in the database: %s",
                                                    ref.id, node, describe(exc))
        raise ApiFailure(503, "unavailable", f"node {node} ended the meeting, but the database could not record "
                         "it: the meeting stays listed until the poller sees it gone, or end it again") from None
    runtime.meetings.remove(ref)
    runtime.announce("ended", ref)
    runtime.counters.meeting_ended(ref.secret_id, seconds)
    return [{"secret": label, "meeting_id": meeting_id, "node": node, "node_answer": ended.answer}]


# Recordings ----------------------------------------------------------------------------------


def _set_id(call: Call) -> str:
    """The set's public_id from the path (the `id` of `GET /recordings`)."""
    set_id: str = parse_field("id", admin_recording.parse_set_id, call.path["id"])
    return set_id


async def _set_tenant(call: Call, set_id: str) -> str:
    """The set's tenant; a set of another tenant answers as one that does not exist."""
    async with call.read() as conn:
        slug = await admin_recording.set_tenant(conn, set_id)
    if slug is None or not call.principal.sees_tenant(slug):
        raise NotFound(f"no record set {set_id!r}")
    return slug


async def recording_list(call: Call) -> list[Row]:
    status = call.query("status")
    limit = call.query("limit")
    async with call.read() as conn:
        return await admin_recording.recording_list(
            conn,
            call.listed_tenant(),
            status.upper() if status is not None else None,
            admin_recording.DEFAULT_LIMIT if limit is None else parse_field("limit", admin_recording.LIST_LIMIT.parse,
                                                                            limit),
        )


async def recording_show(call: Call) -> Row:
    set_id = _set_id(call)
    await _set_tenant(call, set_id)
    async with call.read() as conn:
        return await admin_recording.recording_show(conn, set_id, call.runtime.config.public_base_url)


async def recording_delete(call: Call) -> list[Row]:
    """As `b3lb recording delete`: marked DELETING and committed, then this set's files, then its rows."""
    set_id = _set_id(call)
    slug = await _set_tenant(call, set_id)
    async with call.write("recording.delete", set_id, slug) as conn:
        rows = await admin_recording.recording_mark_deleting(conn, set_id)
    try:
        storage = call.runtime.storage
        async with call.runtime.pool.acquire() as conn:
            return await admin_recording.recording_purge(conn, storage, rows[0])
    except (AdminError, StorageError) as exc:  # storage failed: the set stays DELETING, housekeeping finishes it
        return [{**rows[0], "status": "DELETING (housekeeping will delete it)", "warning": str(exc)}]


async def recording_rerender(call: Call) -> list[Row]:
    set_id = _set_id(call)
    slug = await _set_tenant(call, set_id)
    async with call.write("recording.rerender", set_id, slug) as conn:
        return await admin_recording.recording_rerender(conn, set_id)


# Tokens and the audit log --------------------------------------------------------------------


async def token_list(call: Call) -> list[Row]:
    async with call.read() as conn:
        return await tokens.token_list(conn)


async def token_add(call: Call) -> list[Row]:
    body = call.body
    tenant = call.tenant(body["tenant"]) if body.get("tenant") is not None else None
    async with call.write("token.add", str(body["name"]), tenant) as conn:
        token, rows = await tokens.token_add(conn, body["name"], body["scope"], tenant, body.get("days"))
    return [{**row, "token": token} for row in rows]  # shown this once; only its hash is stored


async def _token_tenant(call: Call, name: str) -> str | None:
    async with call.read() as conn:
        row = await conn.fetchrow(Q.token_by_name, name)
    return row["tenant"] if row is not None else None


async def token_expire(call: Call) -> list[Row]:
    name = call.path["name"]
    days = call.body.get("days", 0)
    async with call.write("token.expire", name, await _token_tenant(call, name)) as conn:
        return await tokens.token_expire(conn, name, days)


async def token_revoke(call: Call) -> list[Row]:
    name = call.path["name"]
    async with call.write("token.revoke", name, await _token_tenant(call, name)) as conn:
        return await tokens.token_revoke(conn, name)


async def audit_list(call: Call) -> list[Row]:
    limit = call.query("limit")
    async with call.read() as conn:
        rows: list[Row] = await audit.audit_list(
            conn, call.listed_tenant(), 100 if limit is None else parse_field("limit", AUDIT_LIMIT.parse, limit)
        )
    return rows


# The table -----------------------------------------------------------------------------------

TENANT_QUERY = Field("tenant", "string", "only this tenant's (a tenant-scoped token: always its own)")
SET_PATH = {"id": "record set ID: its public UUID, the `id` of GET /recordings"}
TOKEN_PATH = {"name": "token name"}

ENDPOINTS = (
    Endpoint("/meetings", (
        Operation("GET", "List running meetings and their nodes", meeting_list, query=(TENANT_QUERY,)),
    )),
    Endpoint("/meetings/where", (
        Operation("GET", "The node hosting a meeting", meeting_where,
                  query=(Field("meeting_id", "string", "the meetingID", required=True),)),
    )),
    Endpoint("/meetings/end", (
        Operation("POST", "End a meeting on its node and drop its route", meeting_end, "write",
                  body=(Field("meeting_id", "string", "the meetingID", required=True),
                        Field("secret", "string", "TENANT[-NNN]; needed when several secrets use the ID"))),
    )),
    Endpoint("/recordings", (
        Operation("GET", "List record sets, newest first", recording_list, query=(
            TENANT_QUERY, Field("status", "string", "only sets in this state", choices=admin_recording.STATUSES),
            Field("limit", "integer", f"at most this many, 1..{admin_recording.LIST_LIMIT.high} (default 100)"))),
    )),
    Endpoint("/recordings/{id}", (
        Operation("GET", "A set with its records, render job and undelivered callbacks", recording_show),
        Operation("DELETE", "Delete a set: marked DELETING, then its files, then its rows", recording_delete,
                  "write"),
    ), SET_PATH),
    Endpoint("/recordings/{id}/rerender", (
        Operation("POST", "Queue the set's render job again", recording_rerender, "write"),
    ), SET_PATH),
    Endpoint("/tokens", (
        Operation("GET", "List admin tokens (never their values)", token_list, "admin", True),
        Operation("POST", "Make a token; its value is in this answer only", token_add, "admin", True, (
            Field("name", "string", "letters, digits and - _ . @ (up to 100)", required=True),
            Field("scope", "string", "read < write < admin", required=True, choices=tokens.SCOPES),
            Field("tenant", "string", "scope the token to this tenant"),
            Field("days", "integer", f"valid for this many days, 1..{tokens.MAX_DAYS} (default: until revoked)"),
        ), status=201),
    )),
    Endpoint("/tokens/{name}/expire", (
        Operation("POST", "Let a token lapse now or after some days", token_expire, "admin", True,
                  (Field("days", "integer", f"from now, 0..{tokens.MAX_DAYS} (0, the default: at once)"),)),
    ), TOKEN_PATH),
    Endpoint("/tokens/{name}/revoke", (
        Operation("POST", "Revoke a token for good", token_revoke, "admin", True),
    ), TOKEN_PATH),
    Endpoint("/audit", (
        Operation("GET", "The audit log, newest first", audit_list, query=(
            TENANT_QUERY, Field("limit", "integer", f"at most this many, 1..{audit.MAX_LIST} (default 100)"))),
    )),
)
