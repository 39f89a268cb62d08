"""Database helpers for tests and fixtures: fresh schemas, SQL from synchronous code.

Test modules import them from here (not from conftest: every conftest.py is a module named
`conftest`, so `from conftest import ...` finds whichever directory's conftest came last).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import asyncpg

from b3lb import migrate as migrations

REPO = Path(__file__).resolve().parent.parent


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


async def _migrate(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrations.migrate(conn)
    finally:
        await conn.close()


