"""Admin commands behind the `b3lb` CLI: input validation, clusters, cluster groups and nodes.

Every command is an async function taking an asyncpg connection (the CLI wraps each command in
one transaction) and returning the rows to show as plain dicts. Problems an operator must fix
raise AdminError with a one-line message; malformed input raises ValueError from the `parse_*`
validators before anything touches the database. Tenants, secrets, parameter rules, assets and
recording profiles live in b3lb/admin_tenant.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from b3lb.db import Q
from b3lb.loadscore import load_score

Row = dict[str, Any]

TENANT_SLUG = re.compile(r"^[A-Z]{2,10}$")
NODE_SLUG = re.compile(r"^[-a-zA-Z0-9_]+$")
SECRET_LABEL = re.compile(r"^([A-Za-z]{2,10})(?:-(\d{1,3}))?$")
SHA_CHOICES = ("SHA256", "SHA384", "SHA512")
PROTOCOLS = ("http", "https")
MAX_INT = 2**31 - 1
MAX_TEXT = 200


class AdminError(Exception):
    """A command cannot be carried out with the database as it is; the message says why."""


# Validators: text in, clean value out, ValueError with a friendly message otherwise ----------


def parse_tenant_slug(text: str) -> str:
    slug = text.strip().upper()
    if not TENANT_SLUG.match(slug):
        raise ValueError(f"invalid tenant slug {text!r}: 2 to 10 letters A-Z required")
    return slug


def parse_node_slug(text: str) -> str:
    if not NODE_SLUG.match(text) or len(text) > MAX_TEXT:
        raise ValueError(f"invalid node slug {text!r}: letters, digits, '-' and '_' only")
    return text


def parse_name(text: str) -> str:
    name = text.strip()
    if not name or len(name) > MAX_TEXT:
        raise ValueError(f"invalid name {text!r}: 1 to {MAX_TEXT} characters required")
    return name


def parse_text(text: str) -> str:
    """A non-empty value without whitespace of at most 200 characters (domain, node secret)."""
    if not text or len(text) > MAX_TEXT or any(c.isspace() for c in text):
        raise ValueError(f"invalid value {text!r}: 1 to {MAX_TEXT} characters without spaces required")
    return text


def parse_endpoint(text: str) -> str:
    if len(text) > MAX_TEXT or any(c.isspace() for c in text):
        raise ValueError(f"invalid path {text!r}: at most {MAX_TEXT} characters without spaces")
    return text.lstrip("/")


def parse_count(text: str) -> int:
    """A non-negative integer (limits, iterations, sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= MAX_INT:
        raise ValueError(f"must be between 0 and {MAX_INT}: {text!r}")
    return value


def parse_positive(text: str) -> int:
    value = parse_count(text)
    if value == 0:
        raise ValueError("must be greater than 0")
    return value


def parse_factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise ValueError(f"must be a non-negative number: {text!r}")
    return value


def parse_port(text: str) -> int:
    value = parse_count(text)
    if not 1 <= value <= 65535:
        raise ValueError(f"port must be between 1 and 65535: {text!r}")
    return value


def parse_sha(text: str) -> str:
    value = text.strip().upper().replace("-", "")
    if value not in SHA_CHOICES:
        raise ValueError(f"unknown algorithm {text!r}: choose from {', '.join(SHA_CHOICES)}")
    return value


def parse_protocol(text: str) -> str:
    value = text.strip().lower()
    if value not in PROTOCOLS:
        raise ValueError(f"unknown protocol {text!r}: choose http or https")
    return value


def parse_sub_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"invalid sub-id {text!r}: a number from 0 to 999 required") from None
    if not 0 <= value <= 999:
        raise ValueError(f"invalid sub-id {text!r}: must be between 0 and 999")
    return value


def parse_sub_ids(text: str) -> range:
    """`N` or `N-M` (inclusive, N <= M), each 0..999."""
    first, dash, last = text.strip().partition("-")
    start = parse_sub_id(first)
    end = parse_sub_id(last) if dash else start
    if end < start:
        raise ValueError(f"invalid sub-id range {text!r}: {start} is greater than {end}")
    return range(start, end + 1)


def parse_secret_label(text: str) -> tuple[str, int]:
    """`ABC` (sub-id 0) or `ABC-001` / `ABC-1` → (tenant slug, sub-id)."""
    match = SECRET_LABEL.match(text.strip())
    if not match:
        raise ValueError(f"invalid secret {text!r}: TENANT or TENANT-NNN expected, e.g. ABC-001")
    slug = parse_tenant_slug(match.group(1))
    return slug, int(match.group(2) or 0)


def parse_node_ref(text: str) -> tuple[str | None, str]:
    """`SLUG` or `CLUSTER/SLUG` → (cluster name or None, node slug)."""
    cluster, slash, slug = text.rpartition("/")
    if slash and not cluster.strip():
        raise ValueError(f"invalid node {text!r}: CLUSTER/SLUG or SLUG expected")
    return (cluster.strip() if slash else None), parse_node_slug(slug)


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
        raise AdminError(f"no cluster named {name!r}")
    return row


async def cluster_group_by_name(conn: asyncpg.Connection, name: str) -> asyncpg.Record:
    row = await conn.fetchrow(Q.admin_cluster_group_by_name, name)
    if row is None:
        raise AdminError(f"no cluster group named {name!r}")
    return row


async def find_node(conn: asyncpg.Connection, ref: str) -> asyncpg.Record:
    """The node addressed by `SLUG` (if unique) or `CLUSTER/SLUG`."""
    cluster, slug = parse_node_ref(ref)
    rows = await conn.fetch(Q.admin_node_find, slug, cluster)
    if not rows:
        where = f" in cluster {cluster!r}" if cluster else ""
        raise AdminError(f"no node {slug!r}{where}")
    if len(rows) > 1:
        choices = ", ".join(f"{row['cluster']}/{row['slug']}" for row in rows)
        raise AdminError(f"node {slug!r} is ambiguous: use CLUSTER/SLUG ({choices})")
    return rows[0]


# Clusters ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSettings:
    """Optional cluster settings; None keeps the current (or default) value."""

    a_factor: float | None = None
    m_factor: float | None = None
    cpu_iterations: int | None = None
    cpu_maximum: int | None = None
    sha: str | None = None


async def _cluster_apply(conn: asyncpg.Connection, cluster_id: int, settings: ClusterSettings) -> None:
    await conn.execute(
        Q.admin_cluster_update,
        cluster_id,
        settings.a_factor,
        settings.m_factor,
        settings.cpu_iterations,
        settings.cpu_maximum,
        settings.sha,
    )


async def cluster_add(conn: asyncpg.Connection, name: str, settings: ClusterSettings) -> list[Row]:
    with expect_unique(f"cluster {name!r} already exists"):
        cluster_id = await conn.fetchval(Q.admin_cluster_insert, name)
    await _cluster_apply(conn, cluster_id, settings)
    return [row for row in await cluster_list(conn) if row["name"] == name]


async def cluster_set(conn: asyncpg.Connection, name: str, settings: ClusterSettings) -> list[Row]:
    cluster = await cluster_by_name(conn, name)
    await _cluster_apply(conn, cluster["id"], settings)
    return [row for row in await cluster_list(conn) if row["name"] == name]


async def cluster_list(conn: asyncpg.Connection) -> list[Row]:
    return [dict(row) for row in await conn.fetch(Q.admin_cluster_list)]


async def cluster_remove(conn: asyncpg.Connection, name: str) -> list[Row]:
    cluster = await cluster_by_name(conn, name)
    nodes = await conn.fetchval(Q.admin_cluster_node_count, cluster["id"])
    if nodes:
        raise AdminError(f"cluster {name!r} is still used by {nodes} node(s): remove them first")
    await conn.execute(Q.admin_cluster_delete, cluster["id"])
    return [{"removed": name}]


# Cluster groups ----------------------------------------------------------------------------


async def cluster_group_list(conn: asyncpg.Connection) -> list[Row]:
    return [dict(row) for row in await conn.fetch(Q.admin_cluster_group_list)]


async def _cluster_group_row(conn: asyncpg.Connection, name: str) -> list[Row]:
    return [row for row in await cluster_group_list(conn) if row["name"] == name]


async def cluster_group_add(conn: asyncpg.Connection, name: str) -> list[Row]:
    with expect_unique(f"cluster group {name!r} already exists"):
        await conn.execute(Q.admin_cluster_group_insert, name)
    return await _cluster_group_row(conn, name)


async def cluster_group_link(conn: asyncpg.Connection, group: str, cluster: str) -> list[Row]:
    group_row = await cluster_group_by_name(conn, group)
    cluster_row = await cluster_by_name(conn, cluster)
    with expect_unique(f"cluster {cluster!r} is already in cluster group {group!r}"):
        await conn.execute(Q.admin_cluster_group_link, group_row["id"], cluster_row["id"])
    return await _cluster_group_row(conn, group)


async def cluster_group_unlink(conn: asyncpg.Connection, group: str, cluster: str) -> list[Row]:
    group_row = await cluster_group_by_name(conn, group)
    cluster_row = await cluster_by_name(conn, cluster)
    if await conn.fetchval(Q.admin_cluster_group_unlink, group_row["id"], cluster_row["id"]) is None:
        raise AdminError(f"cluster {cluster!r} is not in cluster group {group!r}")
    return await _cluster_group_row(conn, group)


async def cluster_group_remove(conn: asyncpg.Connection, name: str) -> list[Row]:
    group = await cluster_group_by_name(conn, name)
    tenants = await conn.fetchval(Q.admin_cluster_group_tenant_count, group["id"])
    if tenants:
        raise AdminError(f"cluster group {name!r} is still used by {tenants} tenant(s)")
    await conn.execute(Q.admin_cluster_group_delete, group["id"])
    return [{"removed": name}]


# Nodes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSettings:
    """Node settings; for `node add` the CLI fills protocol/port/endpoints from node_defaults."""

    domain: str | None = None
    secret: str | None = None
    protocol: str | None = None
    port: int | None = None
    bbb_endpoint: str | None = None
    load_endpoint: str | None = None
    maintenance: bool | None = None


def _node_state(row: asyncpg.Record) -> str:
    if row["maintenance"]:
        return "maintenance"
    return "error" if row["has_errors"] else "ok"


def _node_row(row: asyncpg.Record) -> Row:
    load = load_score(
        attendees=row["attendees"],
        meetings=row["meetings"],
        cpu_load=row["cpu_load"],
        maintenance=row["maintenance"],
        has_errors=row["has_errors"],
        a_factor=row["load_a_factor"],
        m_factor=row["load_m_factor"],
        iterations=row["load_cpu_series_iteratations"],
        cpu_maximum=row["load_cpu_maximum"],
    )
    return {
        "cluster": row["cluster"],
        "slug": row["slug"],
        "domain": row["domain"],
        "port": row["port"],
        "state": _node_state(row),
        "load": round(load, 2),
        "cpu": round(row["cpu_load"], 1),
        "attendees": row["attendees"],
        "meetings": row["meetings"],
        "last_good_poll": _age(row["poll_age"]),
    }


def _age(seconds: float | None) -> str:
    """`12s ago`, `3m ago`, `2h ago`; `never` for a node not polled successfully yet."""
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


async def node_list(conn: asyncpg.Connection, cluster: str | None = None) -> list[Row]:
    if cluster is not None:
        await cluster_by_name(conn, cluster)
    return [_node_row(row) for row in await conn.fetch(Q.admin_node_list, cluster)]


async def _node_shown(conn: asyncpg.Connection, cluster: str, slug: str) -> list[Row]:
    return [row for row in await node_list(conn, cluster) if row["slug"] == slug]


async def node_add(conn: asyncpg.Connection, cluster: str, slug: str, settings: NodeSettings) -> list[Row]:
    cluster_row = await cluster_by_name(conn, cluster)
    s = settings
    with expect_unique(f"node {slug!r} or domain {s.domain!r} already exists in cluster {cluster!r}"):
        await conn.execute(
            Q.admin_node_insert,
            cluster_row["id"],
            slug,
            s.domain,
            s.secret,
            s.protocol,
            s.port,
            s.bbb_endpoint,
            s.load_endpoint,
            bool(s.maintenance),
        )
    return await _node_shown(conn, cluster, slug)


async def node_set(conn: asyncpg.Connection, ref: str, settings: NodeSettings) -> list[Row]:
    node = await find_node(conn, ref)
    s = settings
    with expect_unique(f"domain {s.domain!r} is already used in cluster {node['cluster']!r}"):
        await conn.execute(
            Q.admin_node_update,
            node["id"],
            s.domain,
            s.secret,
            s.protocol,
            s.port,
            s.bbb_endpoint,
            s.load_endpoint,
            s.maintenance,
        )
    return await _node_shown(conn, node["cluster"], node["slug"])


async def node_maintenance(conn: asyncpg.Connection, ref: str, on: bool) -> list[Row]:
    return await node_set(conn, ref, NodeSettings(maintenance=on))


async def node_remove(conn: asyncpg.Connection, ref: str, force: bool = False) -> list[Row]:
    node = await find_node(conn, ref)
    meetings = await conn.fetchval(Q.admin_node_meeting_count, node["id"])
    if meetings and not force:
        raise AdminError(
            f"node {node['cluster']}/{node['slug']} still has {meetings} meeting(s): "
            "use --force to remove it and forget them"
        )
    await conn.execute(Q.admin_node_delete, node["id"])
    return [{"removed": f"{node['cluster']}/{node['slug']}", "meetings_forgotten": meetings}]
