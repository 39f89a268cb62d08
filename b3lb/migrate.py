"""Schema migrations: apply sql/NNNN_name.sql files in order, each in its own transaction.

Applied files are recorded in the ledger table `schema_migrations`. A PostgreSQL advisory lock
(scoped to the current schema) makes concurrent `b3lb migrate` runs wait for each other instead
of applying a file twice.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from b3lb.resources import SQL_DIR

MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
_LOCK_KEY = "SELECT hashtext('b3lb-migrate:' || current_schema())"


class MigrationError(Exception):
    """A migration file failed; the database is as it was before that file."""


@dataclass(frozen=True)
class MigrationFile:
    version: int
    name: str
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    applied_at: datetime | None
    modified: bool  # the file changed after it was applied


def migration_files(directory: Path = SQL_DIR) -> list[MigrationFile]:
    files: list[MigrationFile] = []
    seen: dict[int, str] = {}
    for path in sorted(directory.glob("*.sql")):
        match = MIGRATION_FILE.match(path.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in seen:
            raise MigrationError(f"{path.name}: version {version} already used by {seen[version]}")
        seen[version] = path.name
        files.append(MigrationFile(version, path.name, path))
    if not files:  # every schema starts with 0001: none at all means an incomplete installation
        raise MigrationError(f"no migration files (NNNN_*.sql) in {directory}: incomplete installation")
    return files


async def _applied(conn: asyncpg.Connection) -> dict[int, asyncpg.Record]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations")
    return {row["version"]: row for row in rows}


async def migrate(conn: asyncpg.Connection, directory: Path = SQL_DIR) -> list[MigrationFile]:
    """Apply every pending file; return those applied. Raises MigrationError on the first failure."""
    files = migration_files(directory)
    lock_key = await conn.fetchval(_LOCK_KEY)
    await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
    try:
        await conn.execute(_LEDGER_DDL)
        applied = await _applied(conn)
        done: list[MigrationFile] = []
        for migration in files:
            if migration.version in applied:
                continue
            sql = migration.path.read_text(encoding="utf-8")
            try:
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                detail = f" ({exc.detail})" if getattr(exc, "detail", None) else ""
                raise MigrationError(f"{migration.name}: {exc}{detail}") from None
            done.append(migration)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)


async def status(conn: asyncpg.Connection, directory: Path = SQL_DIR) -> list[MigrationStatus]:
    applied = await _applied(conn)
    result = []
    for migration in migration_files(directory):
        row = applied.get(migration.version)
        result.append(
            MigrationStatus(
                version=migration.version,
                name=migration.name,
                applied_at=row["applied_at"] if row else None,
                modified=bool(row) and row["checksum"] != migration.checksum,
            )
        )
    return result


async def pending(conn: asyncpg.Connection, directory: Path = SQL_DIR) -> list[MigrationFile]:
    applied = await _applied(conn)
    return [m for m in migration_files(directory) if m.version not in applied]
