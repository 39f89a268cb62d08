"""Admin API: meetings (list, where, end), recordings (list, show, delete, rerender), tokens, audit log.

`meeting end` ends the meeting on its node with BBB's own `end` call (b3lb/api/forward.py
call_node, signed with the node's secret) and then drops the routing row exactly as the BBB API's
end does (b3lb/api/calls.py): out of this process's table at once, announced to other instances,
`meeting_end` in the database (with the audit row in the same transaction).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from b3lb import validation as V
from b3lb.admin import audit, tokens
from b3lb.admin import meetings as admin_meeting
from b3lb.admin import recordings as admin_recording
from b3lb.admin.api_core import ApiFailure, Call, Endpoint, Field, Operation, parse_field
from b3lb.admin.common import AdminError, Row
from b3lb.api.forward import call_node, node_suspected, succeeded
from b3lb.db import Q
from b3lb.models import secret_label

_MESSAGE_KEY = re.compile(rb"<messageKey>\s*([^<\s]*)\s*</messageKey>")
AUDIT_LIMIT = V.Whole(1, audit.MAX_LIST)


def _tenant_of_label(label: str) -> str:
    return label.partition("-")[0]


# Meetings ------------------------------------------------------------------------------------


async def meeting_list(call: Call) -> Any:
    async with call.read() as conn:
        return await admin_meeting.meeting_list(conn, call.listed_tenant())


async def meeting_where(call: Call) -> Any:
    meeting_id = call.query("meeting_id")
    if meeting_id is None:
        raise ValueError("meeting_id: required")
    async with call.read() as conn:
        rows = await admin_meeting.meeting_where(conn, meeting_id)
    rows = [row for row in rows if call.principal.sees_tenant(_tenant_of_label(row["secret"]))]
    if not rows:
        raise AdminError(f"no meeting with ID {meeting_id!r}")
    return rows


async def _meeting_key(call: Call, meeting_id: str) -> tuple[int, str, int]:
    """(secret row id, tenant, sub-id) of the one meeting the body means."""
    wanted = call.secret(call.body["secret"]) if call.body.get("secret") is not None else None
    async with call.read() as conn:
        rows = await conn.fetch(Q.api_meeting_key, meeting_id, call.principal.tenant)
    rows = [row for row in rows if wanted is None or (row["tenant"], row["sub_id"]) == wanted]
    if not rows:
        raise AdminError(f"no meeting with ID {meeting_id!r}")
    if len(rows) > 1:
        labels = ", ".join(secret_label(row["tenant"], row["sub_id"]) for row in rows)
        raise ValueError(f"secret: meeting ID {meeting_id!r} is used by {labels}: name the secret")
    return rows[0]["secret_id"], rows[0]["tenant"], rows[0]["sub_id"]


async def meeting_end(call: Call) -> Any:
    runtime = call.runtime
    meeting_id = V.check_value("meeting_id", V.MEETING_ID, call.body["meeting_id"])
    secret_id, slug, sub_id = await _meeting_key(call, meeting_id)
    ref = await runtime.lookup_meeting(secret_id, meeting_id)
    if ref is None:
        raise AdminError(f"no meeting with ID {meeting_id!r}")
    entry = runtime.loads.nodes.get(ref.node_id)
    if entry is None:
        raise AdminError(f"meeting {meeting_id!r} is on a node this process does not know yet: try again")
    node = f"{entry.cluster.name}/{entry.node.slug}"
    outcome = await call_node(runtime, entry, "end", [("meetingID", meeting_id)])
    if outcome.verdict != "ok":
        node_suspected(runtime, entry, "end", outcome.reason)
        raise ApiFailure(502, "node_failed", f"node {node} did not end the meeting: {outcome.reason}")
    key = _MESSAGE_KEY.search(outcome.result.body)
    answer = "SUCCESS" if succeeded(outcome.result) else key.group(1).decode("ascii", "replace") if key else "?"
    if answer not in ("SUCCESS", "notFound"):  # notFound: the node no longer has it; the route is stale
        raise ApiFailure(409, "node_refused", f"node {node} refused to end the meeting: {answer}")
    # As the BBB API's end (b3lb/api/calls.py): leave routing at once, then the row.
    runtime.meetings.remove(ref)
    runtime.announce("ended", ref)
    label = secret_label(slug, sub_id)
    async with call.write("meeting.end", f"{label}/{meeting_id}", slug, {"node": node, "answer": answer}) as conn:
        seconds = await conn.fetchval(Q.meeting_end, ref.id)
    runtime.counters.meeting_ended(ref.secret_id, seconds)
    return [{"secret": label, "meeting_id": meeting_id, "node": node, "node_answer": answer}]


# Recordings ----------------------------------------------------------------------------------


def _set_id(call: Call) -> str:
    set_id: str = parse_field("id", admin_recording.parse_set_id, call.path["id"])
    return set_id


async def _set_tenant(call: Call, set_id: str) -> str:
    """The set's tenant; a set of another tenant answers as one that does not exist."""
    async with call.read() as conn:
        slug = await conn.fetchval(Q.api_record_set_tenant, set_id)
    if slug is None or not call.principal.sees_tenant(slug):
        raise AdminError(f"no record set {set_id!r}")
    return str(slug)


async def recording_list(call: Call) -> Any:
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


async def recording_show(call: Call) -> Any:
    set_id = _set_id(call)
    await _set_tenant(call, set_id)
    async with call.read() as conn:
        return await admin_recording.recording_show(conn, set_id, call.runtime.config.public_base_url)


async def recording_delete(call: Call) -> Any:
    """As `b3lb recording delete`: marked DELETING and committed, then files, then rows."""
    set_id = _set_id(call)
    slug = await _set_tenant(call, set_id)
    async with call.write("recording.delete", set_id, slug) as conn:
        rows = await admin_recording.recording_mark_deleting(conn, set_id)
    async with call.runtime.pool.acquire() as conn:
        try:
            done = await admin_recording.recording_purge(conn, argparse.Namespace(), call.runtime.config, rows)
        except AdminError as exc:  # storage failed: the set stays DELETING and housekeeping finishes it
            return [{**rows[0], "status": "DELETING (housekeeping will delete it)", "warning": str(exc)}]
    if call.principal.tenant is not None:  # the purge's counts include other tenants' sets
        return [{k: v for k, v in row.items() if k not in ("files_deleted", "sets_deleted")} for row in done]
    return done


async def recording_rerender(call: Call) -> Any:
    set_id = _set_id(call)
    slug = await _set_tenant(call, set_id)
    async with call.write("recording.rerender", set_id, slug) as conn:
        return await admin_recording.recording_rerender(conn, set_id)


# Tokens and the audit log --------------------------------------------------------------------


async def token_list(call: Call) -> Any:
    async with call.read() as conn:
        return await tokens.token_list(conn)


async def token_add(call: Call) -> Any:
    body = call.body
    tenant = call.tenant(body["tenant"]) if body.get("tenant") is not None else None
    async with call.write("token.add", str(body["name"]), tenant) as conn:
        token, rows = await tokens.token_add(conn, body["name"], body["scope"], tenant, body.get("days"))
    return [{**row, "token": token} for row in rows]  # shown this once; only its hash is stored


async def _token_tenant(call: Call, name: str) -> str | None:
    async with call.read() as conn:
        row = await conn.fetchrow(Q.token_by_name, name)
    return row["tenant"] if row is not None else None


async def token_expire(call: Call) -> Any:
    name = call.path["name"]
    days = call.body.get("days", 0)
    async with call.write("token.expire", name, await _token_tenant(call, name)) as conn:
        return await tokens.token_expire(conn, name, days)


async def token_revoke(call: Call) -> Any:
    name = call.path["name"]
    async with call.write("token.revoke", name, await _token_tenant(call, name)) as conn:
        return await tokens.token_revoke(conn, name)


async def audit_list(call: Call) -> Any:
    limit = call.query("limit")
    async with call.read() as conn:
        rows: list[Row] = await audit.audit_list(
            conn, call.listed_tenant(), 100 if limit is None else parse_field("limit", AUDIT_LIMIT.parse, limit)
        )
    return rows


# The table -----------------------------------------------------------------------------------

TENANT_QUERY = Field("tenant", "string", "only this tenant's (a tenant-scoped token: always its own)")
SET_PATH = {"id": "record set ID (UUID)"}
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
            Field("days", "integer", "valid for this many days (default: until revoked)"),
        ), status=201),
    )),
    Endpoint("/tokens/{name}/expire", (
        Operation("POST", "Let a token lapse now or after some days", token_expire, "admin", True,
                  (Field("days", "integer", "0 (default): now"),)),
    ), TOKEN_PATH),
    Endpoint("/tokens/{name}/revoke", (
        Operation("POST", "Revoke a token for good", token_revoke, "admin", True),
    ), TOKEN_PATH),
    Endpoint("/audit", (
        Operation("GET", "The audit log, newest first", audit_list, query=(
            TENANT_QUERY, Field("limit", "integer", f"at most this many, 1..{audit.MAX_LIST} (default 100)"))),
    )),
)
