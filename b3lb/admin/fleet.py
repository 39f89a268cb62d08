"""Admin operations on clusters, cluster groups and nodes (CLI and admin API share them)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import asyncpg

from b3lb import validation as V
from b3lb.admin.common import AdminError, Row, cluster_by_name, cluster_group_by_name, expect_unique, find_node
from b3lb.config import NodeDefaults
from b3lb.db import Q
from b3lb.loadscore import load_score, node_state

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
    name = V.check_value("name", V.NAME, name)
    settings = V.check_fields(settings, V.CLUSTER_FIELDS)
    with expect_unique(f"cluster {name!r} already exists"):
        cluster_id = await conn.fetchval(Q.admin_cluster_insert, name)
    await _cluster_apply(conn, cluster_id, settings)
    return [row for row in await cluster_list(conn) if row["name"] == name]


async def cluster_set(conn: asyncpg.Connection, name: str, settings: ClusterSettings) -> list[Row]:
    V.require_change(settings)
    settings = V.check_fields(settings, V.CLUSTER_FIELDS)
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
    name = V.check_value("name", V.NAME, name)
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
    """Node settings; for `node add`, `with_node_defaults` fills protocol, port and endpoints."""

    domain: str | None = None
    secret: str | None = None
    protocol: str | None = None
    port: int | None = None
    bbb_endpoint: str | None = None
    load_endpoint: str | None = None
    maintenance: bool | None = None


def with_node_defaults(settings: NodeSettings, defaults: NodeDefaults) -> NodeSettings:
    """A new node's settings with what was not given taken from [node_defaults] (CLI and admin API)."""
    return replace(
        settings,
        protocol=defaults.protocol if settings.protocol is None else settings.protocol,
        port=defaults.port if settings.port is None else settings.port,
        bbb_endpoint=defaults.bbb_endpoint if settings.bbb_endpoint is None else settings.bbb_endpoint,
        load_endpoint=defaults.load_endpoint if settings.load_endpoint is None else settings.load_endpoint,
    )


def _node_state(row: asyncpg.Record) -> str:
    """loadscore.node_state, but a node both in maintenance (its own or its cluster's) and in error is
    `maintenance+error` in `node list`: both matter there (`node drain --wait` cannot finish; panic can)."""
    state = node_state(row["has_errors"], row["maintenance"])
    return "maintenance+error" if state == "error" and row["maintenance"] else state


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
    slug = V.check_value("slug", V.NODE_SLUG, slug)
    s = V.check_fields(settings, V.NODE_FIELDS)
    for option, value in (("domain", s.domain), ("secret", s.secret)):
        if value is None:
            raise ValueError(f"{option}: required for a new node")
    cluster_row = await cluster_by_name(conn, cluster)
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
    V.require_change(settings)
    s = V.check_fields(settings, V.NODE_FIELDS)
    node = await find_node(conn, ref)
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
