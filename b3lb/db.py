"""Database access: the asyncpg pool, the embedded PostgreSQL, and the named SQL queries.

Queries are hand-written in `sql/queries/*.sql`; each starts with a `-- name: some_name` line and
is reachable as `Q.some_name`. Keeping SQL in .sql files lets operators read and EXPLAIN exactly
what b3lb runs.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from b3lb.config import Config
from b3lb.resources import SQL_DIR

log = logging.getLogger("b3lb.db")

_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


class DatabaseUnavailable(Exception):
    """The database cannot be reached or started; the message says why."""


class Queries:
    """The named queries of sql/queries/*.sql as attributes."""

    def __init__(self, directory: Path) -> None:
        self._queries: dict[str, str] = {}
        for path in sorted(directory.glob("*.sql")):
            text = path.read_text(encoding="utf-8")
            names = list(_NAME_LINE.finditer(text))
            for index, match in enumerate(names):
                end = names[index + 1].start() if index + 1 < len(names) else len(text)
                name = match.group(1)
                if name in self._queries:
                    raise ValueError(f"{path.name}: query {name} defined twice")
                self._queries[name] = text[match.end() : end].strip().rstrip(";")

    def __getattr__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise AttributeError(f"no query named {name} in sql/queries") from None

    def names(self) -> list[str]:
        return sorted(self._queries)


Q = Queries(SQL_DIR / "queries")


@dataclass
class EmbeddedPostgres:
    """A pgserver-managed PostgreSQL living in a local folder."""

    data_dir: Path
    server: Any = None

    def start(self) -> str:
        try:
            import pgserver
        except ImportError as exc:  # pragma: no cover - pgserver is a hard dependency
            raise DatabaseUnavailable(f"embedded PostgreSQL unavailable: {exc}") from None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        except Exception as exc:  # pgserver raises plain exceptions with the initdb/pg_ctl output
            raise DatabaseUnavailable(f"cannot start embedded PostgreSQL in {self.data_dir}: {exc}") from None
        uri: str = self.server.get_uri()
        return uri

    def stop(self) -> None:
        if self.server is not None:
            try:
                self.server.cleanup()
            finally:
                self.server = None


def embedded_data_dir(config: Config) -> Path:
    return Path(config.server.data_dir).resolve() / "pgdata"


async def keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook of the serving process: nothing to undo.

    asyncpg's default reset (unlock advisory locks, close cursors, UNLISTEN, RESET ALL) is a
    database round trip on every release, as many as the queries themselves. The serving
    process never leaves session state behind; the one advisory lock it takes (poller
    leadership) is unlocked explicitly before its connection goes back.
    """


class Database:
    """The pool plus, when no URL is configured, the embedded server behind it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.embedded: EmbeddedPostgres | None = None
        self.url = config.database.url
        self.pool: asyncpg.Pool | None = None

    async def open(
        self, *, min_size: int | None = None, max_size: int | None = None, serving: bool = False
    ) -> asyncpg.Pool:
        """The pool; `serving` applies the serving process's settings (database.synchronous_commit)."""
        if not self.url:
            self.embedded = EmbeddedPostgres(embedded_data_dir(self.config))
            self.url = await asyncio.to_thread(self.embedded.start)
            log.info("embedded PostgreSQL started", extra={"data_dir": str(self.embedded.data_dir)})
        cfg = self.config.database
        try:
            self.pool = await asyncpg.create_pool(
                self.url,
                min_size=cfg.pool_min_size if min_size is None else min_size,
                max_size=cfg.pool_max_size if max_size is None else max_size,
                command_timeout=cfg.command_timeout,
                timeout=cfg.connect_timeout,
                server_settings={"synchronous_commit": cfg.synchronous_commit} if serving else None,
                reset=keep_session if serving else None,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            await self.close()
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc or type(exc).__name__}") from None
        return self.pool

    async def close(self) -> None:
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), timeout=5)
            except TimeoutError:
                self.pool.terminate()
            self.pool = None
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None
