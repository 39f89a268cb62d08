"""`b3lb meeting list|where`: which node hosts which meeting.

A meeting's nonce never leaves here: it authorises the node's end callback and recording upload
(/b3lb/b/meeting/end?nonce=, /b3lb/b/record/upload?nonce=), and these rows are also admin API answers."""

from __future__ import annotations

import asyncpg

from b3lb import validation as V
from b3lb.admin.common import NotFound, Row
from b3lb.admin.tenants import tenant_by_slug
from b3lb.db import Q
from b3lb.loadscore import node_state
from b3lb.models import secret_label


def _meeting_row(row: asyncpg.Record) -> Row:
    return {
        "secret": secret_label(row["tenant"], row["sub_id"]),
        "meeting_id": row["meeting_id"],
        "name": row["meeting_name"],
        "node": f"{row['cluster']}/{row['node']}",
        "node_state": node_state(row["has_errors"], row["maintenance"]),
        "created": row["create_time"].strftime("%Y-%m-%d %H:%M:%S"),
        "attendees": row["attendees"],
        "moderators": row["moderators"],
        "origin": row["origin"],
    }


async def meeting_list(conn: asyncpg.Connection, tenant: str | None) -> list[Row]:
    if tenant is not None:
        await tenant_by_slug(conn, tenant)
    return [_meeting_row(row) for row in await conn.fetch(Q.admin_meeting_list, tenant, None)]


async def meeting_where(conn: asyncpg.Connection, meeting_id: str) -> list[Row]:
    meeting_id = V.check_value("MEETING_ID", V.MEETING_ID, meeting_id)
    rows = await conn.fetch(Q.admin_meeting_list, None, meeting_id)
    if not rows:
        raise NotFound(f"no meeting with ID {meeting_id!r}")
    return [{**_meeting_row(row), "domain": row["domain"]} for row in rows]
