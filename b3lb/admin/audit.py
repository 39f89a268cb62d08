"""The audit log: one row per admin write, naming who made it (token name or CLI user)."""

from __future__ import annotations

import getpass
from typing import Any

import asyncpg
import orjson

from b3lb.admin.common import Row
from b3lb.db import Q

MAX_TARGET = 300
MAX_LIST = 1000


def cli_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers) and no LOGNAME/USER
        user = "unknown"
    return f"cli:{user}"[:120]


async def record(
    conn: asyncpg.Connection,
    actor: str,
    action: str,
    target: str = "",
    tenant: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Log one write inside the caller's transaction: it is kept exactly when the write is."""
    payload = orjson.dumps(detail or {}, default=str).decode()
    await conn.execute(Q.audit_insert, actor[:120], tenant, action[:100], target[:MAX_TARGET], payload)


async def audit_list(conn: asyncpg.Connection, tenant: str | None = None, limit: int = 100) -> list[Row]:
    rows = await conn.fetch(Q.audit_list, tenant, max(1, min(limit, MAX_LIST)))
    return [dict(row) | {"detail": orjson.loads(row["detail"])} for row in rows]
