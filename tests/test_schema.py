"""Every constraint of sql/0001_schema.sql rejects bad rows; defaults and ON DELETE rules hold."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

Body = Callable[[asyncpg.Connection], Awaitable[None]]

SECRET = "a" * 64
CHECK = asyncpg.CheckViolationError
UNIQUE = asyncpg.UniqueViolationError
FOREIGN = asyncpg.ForeignKeyViolationError


def in_db(url: str, body: Body) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(url)
        try:
            await body(conn)
        finally:
            await conn.close()

    asyncio.run(go())


async def base(conn: asyncpg.Connection) -> dict[str, int]:
    """One row each of cluster, node, cluster group (+relation), tenant and secret."""
    ids: dict[str, Any] = {}
    ids["cluster"] = await conn.fetchval("INSERT INTO cluster (name) VALUES ('c1') RETURNING id")
    ids["node"] = await conn.fetchval(
        "INSERT INTO node (cluster_id, slug, domain, secret) VALUES ($1, 'n1', 'n1.example.org', 's') RETURNING id",
        ids["cluster"],
    )
    ids["group"] = await conn.fetchval("INSERT INTO cluster_group (name) VALUES ('g1') RETURNING id")
    await conn.execute(
        "INSERT INTO cluster_group_relation (cluster_group_id, cluster_id) VALUES ($1, $2)",
        ids["group"],
        ids["cluster"],
    )
    ids["tenant"] = await conn.fetchval(
        "INSERT INTO tenant (slug, cluster_group_id) VALUES ('ABC', $1) RETURNING id", ids["group"]
    )
    ids["secret"] = await conn.fetchval(
        "INSERT INTO secret (tenant_id, sub_id, secret) VALUES ($1, 0, $2) RETURNING id", ids["tenant"], SECRET
    )
    return ids


async def rejects(conn: asyncpg.Connection, error: type[Exception], sql: str, *args: Any) -> None:
    with pytest.raises(error):
        await conn.execute(sql, *args)


def test_defaults(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        ids = await base(conn)
        cluster = await conn.fetchrow("SELECT * FROM cluster WHERE id = $1", ids["cluster"])
        assert (cluster["load_a_factor"], cluster["load_m_factor"]) == (1.0, 10.0)
        assert (cluster["load_cpu_series_iteratations"], cluster["load_cpu_maximum"]) == (6, 5000)
        assert cluster["sha_algorithm"] == "SHA256"
        node = await conn.fetchrow("SELECT * FROM node WHERE id = $1", ids["node"])
        assert (node["protocol"], node["port"], node["bbb_endpoint"], node["load_endpoint"]) == (
            "https",
            443,
            "bigbluebutton/api/",
            "b3lb/load",
        )
        assert (node["cpu_load"], node["attendees"], node["meetings"]) == (0, 0, 0)
        assert node["has_errors"] is False and node["maintenance"] is False
        tenant = await conn.fetchrow("SELECT * FROM tenant WHERE id = $1", ids["tenant"])
        assert (tenant["attendee_limit"], tenant["meeting_limit"], tenant["record_by_default"]) == (
            999999,
            999999,
            False,
        )
        assert str(uuid.UUID(tenant["stats_token"])) == tenant["stats_token"]
        secret = await conn.fetchrow("SELECT * FROM secret WHERE id = $1", ids["secret"])
        assert secret["secret2"] == "" and secret["attendee_limit"] is None and secret["record_by_default"] is None
        profile = await conn.fetchrow("INSERT INTO record_profile (name) VALUES ('p') RETURNING *")
        assert (profile["width"], profile["height"], profile["format"]) == (1920, 1080, "MP4")
        assert profile["annotate"] is True and profile["backdrop"] is True and profile["webcam_crop"] is False
        record_set = await conn.fetchrow(
            "INSERT INTO record_set (id, nonce) VALUES ('r', $1) RETURNING *", uuid.uuid4()
        )
        assert (record_set["status"], record_set["format_type"], record_set["raw_size"]) == (
            "UNKNOWN",
            "presentation",
            0,
        )
        asset = await conn.fetchrow("INSERT INTO asset (tenant_id) VALUES ($1) RETURNING *", ids["tenant"])
        assert asset["logo"] == "" and asset["logo_data"] is None
        meeting = await conn.fetchrow(
            "INSERT INTO meeting (secret_id, meeting_id, node_id) VALUES ($1, 'm', $2) RETURNING *",
            ids["secret"],
            ids["node"],
        )
        assert isinstance(meeting["nonce"], uuid.UUID) and meeting["create_time"] is not None

    in_db(db_url, body)


def test_cluster_and_group_constraints(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        ids = await base(conn)
        await rejects(conn, CHECK, "INSERT INTO cluster (name, sha_algorithm) VALUES ('x', 'MD5')")
        await rejects(conn, CHECK, "INSERT INTO cluster (name, sha_algorithm) VALUES ('x', 'sha256')")
        await rejects(conn, CHECK, "INSERT INTO cluster (name) VALUES ('')")
        await rejects(conn, CHECK, "INSERT INTO cluster (name, load_a_factor) VALUES ('x', -1)")
        await rejects(conn, CHECK, "INSERT INTO cluster (name, load_cpu_maximum) VALUES ('x', -1)")
        await rejects(conn, UNIQUE, "INSERT INTO cluster (name) VALUES ('c1')")
        await rejects(conn, UNIQUE, "INSERT INTO cluster_group (name) VALUES ('g1')")
        await rejects(
            conn,
            UNIQUE,
            "INSERT INTO cluster_group_relation (cluster_group_id, cluster_id) VALUES ($1, $2)",
            ids["group"],
            ids["cluster"],
        )

    in_db(db_url, body)


@pytest.mark.parametrize(
    "values",
    [
        "load_a_factor = 'NaN'",
        "load_a_factor = 'Infinity'",
        "load_m_factor = 1000000.5",
        "load_cpu_series_iteratations = 101",
        "load_cpu_series_iteratations = -1",
        "load_cpu_maximum = 1000001",
    ],
)
def test_cluster_bounds(db_url: str, values: str) -> None:
    """0004_bounds.sql: NaN passed `>= 0` (PostgreSQL sorts it above every number); no longer."""

    async def body(conn: asyncpg.Connection) -> None:
        await base(conn)
        await rejects(conn, CHECK, f"UPDATE cluster SET {values}")
        await conn.execute(
            "UPDATE cluster SET load_a_factor = 1000000, load_m_factor = 0, load_cpu_series_iteratations = 100, "
            "load_cpu_maximum = 1000000"
        )

    in_db(db_url, body)


def test_limit_and_size_bounds(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        await base(conn)
        for table, column in (("tenant", "attendee_limit"), ("tenant", "meeting_limit"), ("secret", "meeting_limit")):
            await rejects(conn, CHECK, f"UPDATE {table} SET {column} = 10000001")
            await conn.execute(f"UPDATE {table} SET {column} = 10000000")
        await conn.execute("UPDATE secret SET attendee_limit = NULL")
        for column in ("width", "height", "webcam_width", "webcam_height"):
            await rejects(conn, CHECK, f"INSERT INTO record_profile (name, {column}) VALUES ('p', 8193)")
        await conn.execute("INSERT INTO record_profile (name, width, height) VALUES ('p', 8192, 8192)")

    in_db(db_url, body)


NODE_INSERT = (
    "INSERT INTO node (cluster_id, slug, domain, secret, protocol, port, cpu_load) VALUES ($1, $2, $3, 's', $4, $5, $6)"
)


@pytest.mark.parametrize(
    ("slug", "domain", "protocol", "port", "cpu_load", "error"),
    [
        ("n1", "other.example.org", "https", 443, 0.0, UNIQUE),  # (cluster, slug)
        ("n2", "n1.example.org", "https", 443, 0.0, UNIQUE),  # (cluster, domain)
        ("bad slug", "x.example.org", "https", 443, 0.0, CHECK),
        ("n2", "", "https", 443, 0.0, CHECK),
        ("n2", "x.example.org", "ftp", 443, 0.0, CHECK),
        ("n2", "x.example.org", "https", 0, 0.0, CHECK),
        ("n2", "x.example.org", "https", 65536, 0.0, CHECK),
        ("n2", "x.example.org", "https", 443, -0.1, CHECK),
        ("n2", "x.example.org", "https", 443, 100.1, CHECK),
    ],
)
def test_node_constraints(
    db_url: str, slug: str, domain: str, protocol: str, port: int, cpu_load: float, error: type[Exception]
) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        ids = await base(conn)
        await rejects(conn, error, NODE_INSERT, ids["cluster"], slug, domain, protocol, port, cpu_load)
        # The same node in another cluster is fine.
        other = await conn.fetchval("INSERT INTO cluster (name) VALUES ('c2') RETURNING id")
        await conn.execute(NODE_INSERT, other, "n1", "n1.example.org", "http", 80, 100.0)

    in_db(db_url, body)


def test_node_other_constraints(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        ids = await base(conn)
        await rejects(conn, CHECK, "UPDATE node SET attendees = -1 WHERE id = $1", ids["node"])
        await rejects(conn, CHECK, "UPDATE node SET meetings = -1 WHERE id = $1", ids["node"])
        await rejects(
            conn, FOREIGN, "INSERT INTO node (cluster_id, slug, domain, secret) VALUES (99999, 'x', 'x', 's')"
        )

    in_db(db_url, body)


@pytest.mark.parametrize(
    ("slug", "error"),
    [
        ("abc", CHECK),
        ("A", CHECK),
        ("AB1", CHECK),
        ("A-B", CHECK),
        ("ÄBC", CHECK),
        ("", CHECK),
        ("ABCDEFGHIJK", asyncpg.StringDataRightTruncationError),
        ("ABC", UNIQUE),
    ],
)
def test_tenant_slug(db_url: str, slug: str, error: type[Exception]) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        ids = await base(conn)
        await rejects(conn, error, "INSERT INTO tenant (slug, cluster_group_id) VALUES ($1, $2)", slug, ids["group"])
        await conn.execute("INSERT INTO tenant (slug, cluster_group_id) VALUES ('ABCDEFGHIJ', $1)", ids["group"])

    in_db(db_url, body)


def test_tenant_other_constraints(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        ids = await base(conn)
        group = ids["group"]
        token = await conn.fetchval("SELECT stats_token FROM tenant")
        sql = "INSERT INTO tenant (slug, cluster_group_id, stats_token) VALUES ('XY', $1, $2)"
        await rejects(conn, UNIQUE, sql, group, token)
        await rejects(conn, CHECK, sql, group, "")
        await rejects(
            conn, CHECK, "INSERT INTO tenant (slug, cluster_group_id, attendee_limit) VALUES ('XY', $1, -1)", group
        )
        await rejects(
            conn, CHECK, "INSERT INTO tenant (slug, cluster_group_id, meeting_limit) VALUES ('XY', $1, -1)", group
        )
        await rejects(conn, FOREIGN, "INSERT INTO tenant (slug, cluster_group_id) VALUES ('XY', 99999)")

    in_db(db_url, body)


@pytest.mark.parametrize(
    ("sub_id", "secret", "secret2", "error"),
    [
        (-1, SECRET, "", CHECK),
        (1000, SECRET, "", CHECK),
        (1, "a" * 63, "", CHECK),
        (1, "a" * 65, "", asyncpg.StringDataRightTruncationError),
        (1, "", "", CHECK),
        (1, SECRET, "b" * 10, CHECK),
        (1, SECRET, "b" * 63, CHECK),
        (0, SECRET, "", UNIQUE),  # (tenant, sub_id)
    ],
)
def test_secret_constraints(db_url: str, sub_id: int, secret: str, secret2: str, error: type[Exception]) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        ids = await base(conn)
        sql = "INSERT INTO secret (tenant_id, sub_id, secret, secret2) VALUES ($1, $2, $3, $4)"
        await rejects(conn, error, sql, ids["tenant"], sub_id, secret, secret2)
        await conn.execute(sql, ids["tenant"], 999, SECRET, "b" * 64)

    in_db(db_url, body)


def test_secret_limits(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        ids = await base(conn)
        await rejects(conn, CHECK, "UPDATE secret SET attendee_limit = -1 WHERE id = $1", ids["secret"])
        await rejects(conn, CHECK, "UPDATE secret SET meeting_limit = -1 WHERE id = $1", ids["secret"])

    in_db(db_url, body)


PARAMETER_INSERT = (
    "INSERT INTO parameter (tenant_id, secret_id, create_join, mode, name, value) VALUES ($1, $2, $3, $4, $5, $6)"
)


def test_parameter_constraints(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        ids = await base(conn)
        tenant, secret = ids["tenant"], ids["secret"]
        await rejects(conn, CHECK, PARAMETER_INSERT, tenant, secret, "JOIN", "BLOCK", "role", "")
        await rejects(conn, CHECK, PARAMETER_INSERT, None, None, "JOIN", "BLOCK", "role", "")
        await rejects(conn, CHECK, PARAMETER_INSERT, tenant, None, "join", "BLOCK", "role", "")
        await rejects(conn, CHECK, PARAMETER_INSERT, tenant, None, "ALL", "BLOCK", "role", "")
        await rejects(conn, CHECK, PARAMETER_INSERT, tenant, None, "JOIN", "REMOVE", "role", "")
        await rejects(conn, CHECK, PARAMETER_INSERT, tenant, None, "JOIN", "BLOCK", "", "")
        await conn.execute(PARAMETER_INSERT, tenant, None, "JOIN", "BLOCK", "role", "")
        await conn.execute(PARAMETER_INSERT, None, secret, "JOIN", "BLOCK", "role", "")
        await conn.execute(PARAMETER_INSERT, tenant, None, "CREATE", "BLOCK", "role", "")
        # NULLS NOT DISTINCT: the NULL secret (or tenant) does not make a second rule unique.
        await rejects(conn, UNIQUE, PARAMETER_INSERT, tenant, None, "JOIN", "SET", "role", "x")
        await rejects(conn, UNIQUE, PARAMETER_INSERT, None, secret, "JOIN", "OVERRIDE", "role", "x")

    in_db(db_url, body)


def test_asset_constraints(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        ids = await base(conn)
        tenant = ids["tenant"]
        for kind in ("logo", "slide", "css"):
            await rejects(conn, CHECK, f"INSERT INTO asset (tenant_id, {kind}) VALUES ($1, 'a.png')", tenant)
            await rejects(conn, CHECK, f"INSERT INTO asset (tenant_id, {kind}_data) VALUES ($1, 'x'::bytea)", tenant)
        await conn.execute("INSERT INTO asset (tenant_id, logo, logo_data) VALUES ($1, 'a.png', 'x'::bytea)", tenant)
        await rejects(conn, UNIQUE, "INSERT INTO asset (tenant_id) VALUES ($1)", tenant)

    in_db(db_url, body)


def test_meeting_constraints(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        ids = await base(conn)
        sql = "INSERT INTO meeting (secret_id, meeting_id, node_id) VALUES ($1, $2, $3)"
        await conn.execute(sql, ids["secret"], "m1", ids["node"])
        await rejects(conn, UNIQUE, sql, ids["secret"], "m1", ids["node"])
        await rejects(conn, CHECK, sql, ids["secret"], "", ids["node"])
        await rejects(conn, FOREIGN, sql, ids["secret"], "m2", 99999)

    in_db(db_url, body)


def test_recording_constraints(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        await rejects(conn, CHECK, "INSERT INTO record_profile (name, format) VALUES ('p', 'AVI')")
        await rejects(conn, CHECK, "INSERT INTO record_profile (name, format) VALUES ('p', 'mp4')")
        await rejects(conn, CHECK, "INSERT INTO record_profile (name, width) VALUES ('p', 0)")
        profile = await conn.fetchval("INSERT INTO record_profile (name) VALUES ('p') RETURNING id")
        await rejects(conn, UNIQUE, "INSERT INTO record_profile (name) VALUES ('p')")
        sql = "INSERT INTO record_set (id, nonce, status, format_type) VALUES ($1, $2, $3, $4)"
        await rejects(conn, CHECK, sql, "r", uuid.uuid4(), "DONE", "presentation")
        await rejects(conn, CHECK, sql, "r", uuid.uuid4(), "UPLOADED", "podcast")
        await rejects(conn, CHECK, sql, "", uuid.uuid4(), "UPLOADED", "video")
        await conn.execute(sql, "r", uuid.uuid4(), "RENDERED", "video")
        record = "INSERT INTO record (recordset_id, record_id, profile_id) VALUES ($1, 'rec', $2)"
        await conn.execute(record, "r", profile)
        await rejects(conn, UNIQUE, record, "r", profile)
        await rejects(conn, FOREIGN, "DELETE FROM record_profile WHERE id = $1", profile)
        await conn.execute("DELETE FROM record_set WHERE id = 'r'")
        assert await conn.fetchval("SELECT count(*) FROM record") == 0

    in_db(db_url, body)


def test_on_delete_rules(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        ids = await base(conn)
        await rejects(conn, FOREIGN, "DELETE FROM cluster WHERE id = $1", ids["cluster"])
        await rejects(conn, FOREIGN, "DELETE FROM cluster_group WHERE id = $1", ids["group"])
        await conn.execute(
            "INSERT INTO meeting (secret_id, meeting_id, node_id) VALUES ($1, 'm', $2)", ids["secret"], ids["node"]
        )
        await conn.execute(PARAMETER_INSERT, ids["tenant"], None, "JOIN", "BLOCK", "role", "")
        await conn.execute(PARAMETER_INSERT, None, ids["secret"], "JOIN", "BLOCK", "role", "")
        await conn.execute("INSERT INTO asset (tenant_id) VALUES ($1)", ids["tenant"])
        await conn.execute("DELETE FROM tenant WHERE id = $1", ids["tenant"])
        for table in ("secret", "meeting", "parameter", "asset"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table  # noqa: S608
        # With the tenant gone the group may go; the relation row goes with it.
        await conn.execute("DELETE FROM cluster_group WHERE id = $1", ids["group"])
        assert await conn.fetchval("SELECT count(*) FROM cluster_group_relation") == 0
        await conn.execute("DELETE FROM node WHERE id = $1", ids["node"])
        await conn.execute("DELETE FROM cluster WHERE id = $1", ids["cluster"])

    in_db(db_url, body)


def test_node_delete_cascades_meetings(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        ids = await base(conn)
        await conn.execute(
            "INSERT INTO meeting (secret_id, meeting_id, node_id) VALUES ($1, 'm', $2)", ids["secret"], ids["node"]
        )
        await conn.execute("DELETE FROM node WHERE id = $1", ids["node"])
        assert await conn.fetchval("SELECT count(*) FROM meeting") == 0

    in_db(db_url, body)
