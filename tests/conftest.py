"""Shared fixtures: a real PostgreSQL, and a fresh schema per test.

PostgreSQL comes from DATABASE_URL when it is set, otherwise from an embedded server (pgserver)
started once for the whole run. Each test gets its own schema, selected through the URL's
`options=-csearch_path=...`, so tests never see each other's rows and psql/asyncpg/the CLI all
land in the same place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from db_support import REPO, _migrate, fresh_schema, run

from b3lb.db import EmbeddedPostgres


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


@pytest.fixture
def empty_db(pg_url: str) -> Iterator[str]:
    """URL of a fresh, empty schema (no migrations applied)."""
    with fresh_schema(pg_url) as url:
        yield url


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
