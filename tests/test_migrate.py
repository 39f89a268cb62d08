"""Schema migrations (b3lb/migrate.py) against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from b3lb import migrate as migrations
from b3lb.db import SQL_DIR


def in_db(url: str, body: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await body(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


async def tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    return {row["tablename"] for row in rows}


async def ledger(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version")
    return [tuple(row) for row in rows]


@pytest.fixture
def only_0001(tmp_path: Path) -> Path:
    """A migrations folder holding just a copy of 0001_schema.sql."""
    shutil.copy(SQL_DIR / "0001_schema.sql", tmp_path / "0001_schema.sql")
    return tmp_path


def test_fresh_schema_applies_everything_once(empty_db: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        files = [m.name for m in migrations.migration_files()]
        assert files[0] == "0001_schema.sql"
        assert [m.name for m in await migrations.pending(conn)] == files
        applied = await migrations.migrate(conn)
        assert [m.name for m in applied] == files
        assert {"cluster", "node", "tenant", "secret", "meeting", "schema_migrations"} <= await tables(conn)
        assert [row[1] for row in await ledger(conn)] == files
        assert await migrations.migrate(conn) == []
        assert await migrations.pending(conn) == []

    in_db(empty_db, body)


def test_status(empty_db: str, only_0001: Path) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        (before,) = await migrations.status(conn, only_0001)
        assert (before.name, before.applied_at, before.modified) == ("0001_schema.sql", None, False)
        await migrations.migrate(conn, only_0001)
        (after,) = await migrations.status(conn, only_0001)
        assert after.applied_at is not None and after.modified is False
        with (only_0001 / "0001_schema.sql").open("a") as handle:
            handle.write("\n-- edited after it was applied\n")
        (edited,) = await migrations.status(conn, only_0001)
        assert edited.modified is True and edited.applied_at == after.applied_at

    in_db(empty_db, body)


def test_failing_file_leaves_database_unchanged(empty_db: str, only_0001: Path) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        await migrations.migrate(conn, only_0001)
        (only_0001 / "0002_broken.sql").write_text(
            "CREATE TABLE half_done (id integer);\n"
            "ALTER TABLE tenant ADD COLUMN extra integer;\n"
            "SELECT * FROM no_such_table;\n"
        )
        before_tables, before_ledger = await tables(conn), await ledger(conn)
        with pytest.raises(migrations.MigrationError) as caught:
            await migrations.migrate(conn, only_0001)
        message = str(caught.value)
        assert message.startswith("0002_broken.sql: ")
        assert 'relation "no_such_table" does not exist' in message
        assert await tables(conn) == before_tables and "half_done" not in before_tables
        assert await ledger(conn) == before_ledger
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = 'tenant' AND column_name = 'extra'"
        )
        assert columns == []
        assert [m.name for m in await migrations.pending(conn, only_0001)] == ["0002_broken.sql"]

    in_db(empty_db, body)


def test_duplicate_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(migrations.MigrationError, match="version 1 already used"):
        migrations.migration_files(tmp_path)


def test_concurrent_migrations_apply_each_file_once(empty_db: str, only_0001: Path) -> None:
    (only_0001 / "0002_more.sql").write_text("CREATE TABLE more_things (id integer PRIMARY KEY);\n")

    async def body() -> None:
        first, second = await asyncpg.connect(empty_db), await asyncpg.connect(empty_db)
        try:
            results = await asyncio.gather(migrations.migrate(first, only_0001), migrations.migrate(second, only_0001))
            applied = sorted(m.name for result in results for m in result)
            assert applied == ["0001_schema.sql", "0002_more.sql"]
            assert [row[1] for row in await ledger(first)] == ["0001_schema.sql", "0002_more.sql"]
            assert "more_things" in await tables(second)
        finally:
            await first.close()
            await second.close()

    asyncio.run(body())


def test_bounds_migration_clamps_existing_values(empty_db: str, tmp_path: Path) -> None:
    """Rows stored before 0004 (psql, or older admin commands) are clamped so its constraints hold."""
    for path in SQL_DIR.glob("000[123]_*.sql"):
        shutil.copy(path, tmp_path / path.name)

    async def body(conn: asyncpg.Connection) -> None:
        await migrations.migrate(conn, tmp_path)
        await conn.execute(
            "INSERT INTO cluster (name, load_a_factor, load_m_factor, load_cpu_series_iteratations, load_cpu_maximum) "
            "VALUES ('huge', 'Infinity', 'NaN', 1000000000, 2000000000), ('fine', 2, 3, 6, 5000)"
        )
        group = await conn.fetchval("INSERT INTO cluster_group (name) VALUES ('g') RETURNING id")
        tenant = await conn.fetchval(
            "INSERT INTO tenant (slug, cluster_group_id, attendee_limit) VALUES ('ABC', $1, 2147483647) RETURNING id",
            group,
        )
        await conn.execute(
            "INSERT INTO secret (tenant_id, sub_id, secret, meeting_limit) VALUES ($1, 0, $2, 99999999)",
            tenant,
            "a" * 64,
        )
        await conn.execute("INSERT INTO record_profile (name, width) VALUES ('wide', 100000)")
        applied = await migrations.migrate(conn)
        assert [m.name for m in applied][0] == "0004_bounds.sql"
        rows = await conn.fetch(
            "SELECT name, load_a_factor, load_m_factor, load_cpu_series_iteratations, load_cpu_maximum "
            "FROM cluster ORDER BY name"
        )
        assert [tuple(row) for row in rows] == [("fine", 2.0, 3.0, 6, 5000), ("huge", 1e6, 0.0, 100, 1_000_000)]
        assert await conn.fetchval("SELECT attendee_limit FROM tenant") == 10_000_000
        assert await conn.fetchval("SELECT meeting_limit FROM secret") == 10_000_000
        assert await conn.fetchval("SELECT width FROM record_profile") == 8192

    in_db(empty_db, body)


def test_no_migration_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(migrations.MigrationError, match="no migration files .* incomplete installation"):
        migrations.migration_files(tmp_path)
