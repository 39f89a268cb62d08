"""What every admin operation shares: AdminError, the row type, database error wording and look-ups.

Every operation is an async function taking an asyncpg connection (the CLI wraps each command in
one transaction) and returning the rows to show as plain dicts. Problems an operator must fix
raise AdminError with a one-line message; every value is checked against the rules of
b3lb/validation.py (ValueError naming the field) before anything touches the database.
Tenants, secrets, parameter rules, assets and recording profiles live in b3lb/admin/tenants.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg

from b3lb import validation as V
from b3lb.db import Q

Row = dict[str, Any]


class AdminError(Exception):
    """A command cannot be carried out with the database as it is; the message says why."""


class NotFound(AdminError):
    """The resource a command names does not exist (the admin API answers 404, other AdminErrors 409)."""


def parse_node_ref(text: str) -> tuple[str | None, str]:
    """`SLUG` or `CLUSTER/SLUG` → (cluster name or None, node slug)."""
    cluster, slash, slug = text.rpartition("/")
    if slash and not cluster.strip():
        raise ValueError(f"invalid node {text!r}: CLUSTER/SLUG or SLUG expected")
    try:
        return (V.NAME.check(cluster) if slash else None), V.NODE_SLUG.check(slug)
    except ValueError as exc:
        raise ValueError(f"invalid node {text[:60]!r}: {exc}") from None


# Database errors -------------------------------------------------------------------------


@contextmanager
def expect_unique(message: str) -> Iterator[None]:
    """Turn a unique violation inside the block into AdminError(message)."""
    try:
        yield
    except asyncpg.UniqueViolationError:
        raise AdminError(message) from None


def _field(exc: asyncpg.PostgresError) -> str:
    table = getattr(exc, "table_name", None) or "row"
    constraint = getattr(exc, "constraint_name", None) or ""
    name = re.sub(r"_check\d*$", "", constraint)
    if name.startswith(table + "_"):
        name = name[len(table) + 1 :]
    return f"{table}.{name}" if name and name != table else table


def describe_db_error(exc: asyncpg.PostgresError) -> str:
    """One sentence for a constraint violation the validators did not catch first."""
    detail = getattr(exc, "detail", None) or ""
    table = getattr(exc, "table_name", None) or "row"
    if isinstance(exc, asyncpg.UniqueViolationError):
        return f"{table} already exists: {detail or exc}"
    if isinstance(exc, (asyncpg.ForeignKeyViolationError, asyncpg.RestrictViolationError)):
        match = re.search(r'is still referenced from table "(\w+)"', detail)
        if match:
            return f"{table} is still used by {match.group(1)} rows"
        return f"{table}: {detail or exc}"
    if isinstance(exc, asyncpg.CheckViolationError):
        return f"invalid value for {_field(exc)} (constraint {exc.constraint_name})"
    if isinstance(exc, asyncpg.NotNullViolationError):
        return f"{table}.{getattr(exc, 'column_name', '?')} must not be empty"
    return f"database: {exc}"


# Look-ups ----------------------------------------------------------------------------------


async def cluster_by_name(conn: asyncpg.Connection, name: str) -> asyncpg.Record:
    row = await conn.fetchrow(Q.admin_cluster_by_name, name)
    if row is None:
        raise NotFound(f"no cluster named {name!r}")
    return row


async def cluster_group_by_name(conn: asyncpg.Connection, name: str) -> asyncpg.Record:
    row = await conn.fetchrow(Q.admin_cluster_group_by_name, name)
    if row is None:
        raise NotFound(f"no cluster group named {name!r}")
    return row


async def find_node(conn: asyncpg.Connection, ref: str) -> asyncpg.Record:
    """The node addressed by `SLUG` (if unique) or `CLUSTER/SLUG`."""
    cluster, slug = parse_node_ref(ref)
    rows = await conn.fetch(Q.admin_node_find, slug, cluster)
    if not rows:
        where = f" in cluster {cluster!r}" if cluster else ""
        raise NotFound(f"no node {slug!r}{where}")
    if len(rows) > 1:
        choices = ", ".join(f"{row['cluster']}/{row['slug']}" for row in rows)
        raise AdminError(f"node {slug!r} is ambiguous: use CLUSTER/SLUG ({choices})")
    return rows[0]


