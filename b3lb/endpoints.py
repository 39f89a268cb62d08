"""b3lb's own HTTP endpoints besides the BBB API: health, tenant assets, statistics, metrics."""

from __future__ import annotations

import asyncio
import hmac
import logging

import asyncpg
import orjson
from tornado.web import RequestHandler

from b3lb import metrics
from b3lb.db import Q
from b3lb.runtime import Runtime
from b3lb.tenancy import SecretContext

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


class _TenantEndpoint(RequestHandler):
    """Shared by /b3lb/stats and /b3lb/metrics: tenant from path or Host, token in Authorization."""

    def initialize(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def compute_etag(self) -> None:
        return None

    def authorized_secret(self, slug: str | None, sub: str | None) -> SecretContext | None:
        ctx = self.runtime.secret_for(self.request, slug, sub)
        token = self.request.headers.get("Authorization", "")
        if ctx is None or not token or not hmac.compare_digest(token, ctx.tenant.stats_token):
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


class MetricsHandler(_TenantEndpoint):
    """`GET /b3lb/metrics`: the global view on the base domain or with the admin token, a
    tenant's (or secret's) view with its stats token, else 401."""

    async def get(self, slug: str | None = None, sub: str | None = None) -> None:
        token = self.request.headers.get("Authorization", "")
        admin = self.runtime.config.metrics.admin_token
        on_base = slug is None and self.runtime.hosts.is_base(self.runtime.request_host(self.request))
        if (on_base and not token) or (admin and token and hmac.compare_digest(token, admin)):
            scope = None
        else:
            scope = self.authorized_secret(slug, sub)
            if scope is None:
                return self.unauthorized()
        body = await metrics.render(self.runtime, scope)
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.finish(body)
