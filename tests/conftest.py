"""Shared fixtures: a real PostgreSQL, and a fresh schema per test.

PostgreSQL comes from DATABASE_URL when it is set, otherwise from an embedded server (pgserver)
started once for the whole run. Each test gets its own schema, selected through the URL's
`options=-csearch_path=...`, so tests never see each other's rows and psql/asyncpg/the CLI all
land in the same place.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from b3lb import migrate as migrations
from b3lb.db import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL", "")
    if url:
        yield url
        return
    folder = Path(tempfile.mkdtemp(prefix="b3lb-test-pg-"))
    embedded = EmbeddedPostgres(folder / "pgdata")
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()


def with_search_path(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote('-csearch_path=' + schema, safe='')}"


def run(coro):  # noqa: ANN001, ANN201 - tiny helper for sync fixtures
    """Run a coroutine on a private loop, leaving any current (Tornado) loop untouched."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def execute_sql(url: str, sql: str) -> None:
    """Run SQL from a synchronous test or fixture."""
    run(_execute(url, sql))


@contextlib.contextmanager
def fresh_schema(pg_url: str) -> Iterator[str]:
    """URL of a new, empty schema, dropped afterwards."""
    schema = "t_" + secrets.token_hex(6)
    execute_sql(pg_url, f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(pg_url, schema)
    finally:
        execute_sql(pg_url, f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def empty_db(pg_url: str) -> Iterator[str]:
    """URL of a fresh, empty schema (no migrations applied)."""
    with fresh_schema(pg_url) as url:
        yield url


async def _migrate(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrations.migrate(conn)
    finally:
        await conn.close()


@pytest.fixture
def db_url(empty_db: str) -> str:
    """URL of a fresh schema with every migration applied."""
    run(_migrate(empty_db))
    return empty_db


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for running `b3lb` as a subprocess against the test schema."""
    env = dict(os.environ)
    env["DATABASE_URL"] = db_url
    env["B3LB_SERVER_DATA_DIR"] = str(tmp_path / "var")
    env["B3LB_CONFIG"] = str(REPO / "conf" / "b3lb.conf")
    env.pop("REDIS_URL", None)
    return env
