"""b3lb's own HTTP endpoints besides the BBB API: health check and tenant assets."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from tornado.web import RequestHandler

from b3lb.db import Q
from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.endpoints")


class PingHandler(RequestHandler):
    """`GET /b3lb/ping`: 200 `OK!` when the database answers, 503 `Doh!` when it does not."""

    def initialize(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def compute_etag(self) -> None:
        return None

    async def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        try:
            await asyncio.wait_for(self.runtime.pool.fetchval(Q.ping), timeout=2.0)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("ping: database unavailable: %s", exc or type(exc).__name__)
            self.set_status(503)
            self.finish("Doh!")
            return
        self.finish("OK!")


class AssetHandler(RequestHandler):
    """`GET /b3lb/t/{slug}/logo|slide|css`: the stored file with its MIME type, else 404."""

    def initialize(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def get(self, slug: str, kind: str) -> None:
        row = await self.runtime.pool.fetchrow(Q.asset_file, slug.upper(), kind)
        if row is None or row["data"] is None:
            self.set_status(404)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("Not Found")
            return
        self.set_header("Content-Type", row["mime"] or "application/octet-stream")
        self.set_header("Cache-Control", "public, max-age=300")
        self.finish(bytes(row["data"]))
