"""b3lb's own HTTP endpoints besides the BBB API: health, tenant assets, statistics (metrics: metrics_http.py)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from types import TracebackType
from typing import Any

import asyncpg
import orjson
from tornado.web import RequestHandler

from b3lb.db import Q
from b3lb.outage import is_database_unavailable
from b3lb.runtime import Runtime
from b3lb.tenancy import SecretContext

log = logging.getLogger("b3lb.endpoints")


class RuntimeHandler(RequestHandler):
    """Base of b3lb's own RequestHandlers: a database outage answers 503 and is logged once per
    outage (b3lb/outage.py), never a 500 with a traceback per request. Other errors are bugs
    and keep Tornado's 500 and traceback."""

    def initialize(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if value is not None and is_database_unavailable(value):
            self.runtime.database.failed(value)
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if exc is not None and is_database_unavailable(exc):
            self.set_status(503)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.set_header("Retry-After", "5")
            self.finish("Service Unavailable: the database is unavailable")
            return
        super().write_error(status_code, **kwargs)


class PingHandler(RuntimeHandler):
    """`GET /b3lb/ping`: 200 `OK!` when the database answers, 503 `Doh!` when it does not."""

    def compute_etag(self) -> None:
        return None

    async def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        try:
            await asyncio.wait_for(self.runtime.pool.fetchval(Q.ping), timeout=2.0)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.runtime.database.failed(f"ping: {exc or type(exc).__name__}")  # logged once per outage
            self.set_status(503)
            self.finish("Doh!")
            return
        self.runtime.database.succeeded()
        self.finish("OK!")


ASSET_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"


class AssetHandler(RuntimeHandler):
    """`GET /b3lb/t/{slug}/logo|slide|css`: the stored file with its MIME type, else 404."""

    async def get(self, slug: str, kind: str) -> None:
        row = await self.runtime.pool.fetchrow(Q.asset_file, slug.upper(), kind)
        if row is None or row["data"] is None:
            self.set_status(404)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("Not Found")
            return
        self.set_header("Content-Type", row["mime"] or "application/octet-stream")
        self.set_header("Cache-Control", "public, max-age=300")
        # A tenant's file is served from the dashboard's origin: an SVG logo opened on its own must not
        # run script there (it could read the dashboard's token from sessionStorage).
        self.set_header("Content-Security-Policy", ASSET_POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(bytes(row["data"]))


def token_matches(presented: str, expected: str) -> bool:
    """Whether an Authorization value is the expected token, in constant time, on bytes.

    Tornado hands header values over decoded as latin-1, so they may hold any byte; comparing
    str with hmac.compare_digest raises TypeError on non-ASCII (a 500). The bytes as sent are
    compared with the token's UTF-8 bytes. An empty expected token never matches."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(presented.encode("latin-1", "replace"), expected.encode("utf-8"))


class _TenantEndpoint(RuntimeHandler):
    """/b3lb/stats: tenant from path or Host, token in Authorization."""

    def compute_etag(self) -> None:
        return None

    def presented_token(self) -> str:
        return self.request.headers.get("Authorization", "")

    def authorized_secret(self, slug: str | None, sub: str | None) -> SecretContext | None:
        ctx = self.runtime.secret_for(self.request, slug, sub)
        if ctx is None or not token_matches(self.presented_token(), ctx.tenant.stats_token):
            return None
        return ctx

    def unauthorized(self) -> None:
        self.set_status(401)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("Unauthorized")


class StatsHandler(_TenantEndpoint):
    """`GET /b3lb/stats`: the tenant's current figures by origin server and origin, as JSON."""

    async def get(self, slug: str | None = None, sub: str | None = None) -> None:
        ctx = self.authorized_secret(slug, sub)
        if ctx is None:
            return self.unauthorized()
        rows = await self.runtime.pool.fetch(Q.tenant_stats, ctx.tenant.id)
        result: dict[str, dict[str, dict[str, int]]] = {}
        for row in rows:
            result.setdefault(row["origin_server_name"], {})[row["origin"]] = {
                "participantCount": row["attendees"],
                "listenerCount": row["listeners"],
                "voiceParticipantCount": row["voices"],
                "moderatorCount": row["moderators"],
                "videoCount": row["videos"],
                "meetingCount": row["meetings"],
            }
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(result))
