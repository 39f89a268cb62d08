"""`GET /b3lb/metrics`, answered from b3lb/metrics_cache.py straight on the HTTP connection.

The URL picks the view, the Authorization token opens it (spec 4.6, as its REC says): a tenant's
(or secret's) view, addressed by path or Host, with the tenant's stats token or
`metrics.admin_token`; the global view (every tenant, every node) with the admin token only, on
any host that addresses no tenant. Anything else, and the global view when no admin token is
configured, is 401.

Like the BBB API (b3lb/api/handler.py) this skips Tornado's RequestHandler: a scrape is a cached
body and a few headers, and the handler machinery would cost more than everything else. The body
is gzipped when the scraper accepts it (Prometheus always does): the global view of a thousand
secrets is half a megabyte of text, a few dozen kilobytes gzipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from email.utils import formatdate
from typing import Any

from tornado.httputil import HTTPHeaders, HTTPMessageDelegate, HTTPServerRequest, RequestStartLine, ResponseStartLine
from tornado.iostream import StreamClosedError
from tornado.routing import Router

from b3lb.endpoints import token_matches
from b3lb.metrics import CONTENT_TYPE, view_of
from b3lb.metrics_cache import MetricsCache, View
from b3lb.outage import is_database_unavailable

log = logging.getLogger("b3lb.metrics")
_ACCESS_LOG = logging.getLogger("tornado.access")

PLAIN = "text/plain; charset=utf-8"
UNAUTHORIZED = (401, "Unauthorized", b"Unauthorized")
UNAVAILABLE = (503, "Service Unavailable", b"Service Unavailable: the database is unavailable")
INTERNAL = (500, "Internal Server Error", b"Internal Server Error")
GONE = (503, "Service Unavailable", b"Service Unavailable: try again")  # the tenant went away meanwhile
_ANSWERING: set[asyncio.Task[None]] = set()
_DATE: list[Any] = [0, ""]


class MetricsRouter(Router):
    """The route table's target for /b3lb/metrics and /b3lb/t/{tenant}/metrics."""

    def __init__(self, cache: MetricsCache) -> None:
        self.cache = cache

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> MetricsExchange:
        found = {k: v.decode("ascii") for k, v in (kwargs.get("path_kwargs") or {}).items() if v is not None}
        return MetricsExchange(self.cache, request, found.get("slug"), found.get("sub"))


class MetricsExchange(HTTPMessageDelegate):
    __slots__ = ("cache", "request", "slug", "sub", "started")

    def __init__(self, cache: MetricsCache, request: HTTPServerRequest, slug: str | None, sub: str | None) -> None:
        self.cache, self.request, self.slug, self.sub = cache, request, slug, sub
        self.started = time.perf_counter()

    def headers_received(
        self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders
    ) -> Awaitable[None] | None:
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return None  # only GET is answered, and a GET's body means nothing

    def on_connection_close(self) -> None:
        pass

    def finish(self) -> None:
        request = self.request
        if request.method != "GET":
            self._send(405, "Method Not Allowed", [b"Method Not Allowed"], PLAIN, {"Allow": "GET"})
            return
        view = self._authorized_view()
        if view is None:
            self._refuse(UNAUTHORIZED)
            return
        gzip = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        chunks = self.cache.ready(view, gzip)
        if chunks is not None:
            self._answer(chunks, gzip)
            return
        task = asyncio.get_running_loop().create_task(self._answer_later(view, gzip))
        _ANSWERING.add(task)  # a strong reference until it is done (the loop keeps only weak ones)
        task.add_done_callback(_ANSWERING.discard)

    def _authorized_view(self) -> View | None:
        runtime = self.cache.runtime
        presented = self.request.headers.get("Authorization", "")
        admin = token_matches(presented, runtime.config.metrics.admin_token)
        scope = runtime.secret_for(self.request, self.slug, self.sub)
        if scope is not None:
            allowed = admin or token_matches(presented, scope.tenant.stats_token)
        else:
            allowed = admin and self.slug is None  # an unknown tenant in the path is no global view
        return view_of(scope) if allowed else None

    async def _answer_later(self, view: View, gzip: bool) -> None:
        try:
            chunks = await self.cache.get(view, gzip)
        except Exception as exc:
            if is_database_unavailable(exc):  # counted and logged once per outage by the cache
                self._refuse(UNAVAILABLE, {"Retry-After": "5"})
            else:
                self._refuse(INTERNAL)
            return
        if chunks is None:
            self._refuse(GONE, {"Retry-After": "1"})
        else:
            self._answer(chunks, gzip)

    def _answer(self, chunks: list[bytes], gzip: bool) -> None:
        headers = {"Vary": "Accept-Encoding"}
        if gzip:
            headers["Content-Encoding"] = "gzip"
        self._send(200, "OK", chunks, CONTENT_TYPE, headers)

    def _refuse(self, answer: tuple[int, str, bytes], extra: dict[str, str] | None = None) -> None:
        status, reason, body = answer
        self._send(status, reason, [body], PLAIN, extra or {})

    def _send(self, status: int, reason: str, chunks: list[bytes], content_type: str, extra: dict[str, str]) -> None:
        connection = self.request.connection
        assert connection is not None
        headers = HTTPHeaders()
        headers["Date"] = _http_date()
        headers["Content-Type"] = content_type
        for name, value in extra.items():
            headers[name] = value
        headers["Content-Length"] = str(sum(len(chunk) for chunk in chunks))
        try:
            connection.write_headers(ResponseStartLine("HTTP/1.1", status, reason), headers, chunks[0])
            for chunk in chunks[1:]:
                connection.write(chunk)
            connection.finish()
        except StreamClosedError:
            pass  # the scraper left
        if status >= 400:
            level = logging.ERROR if status >= 500 else logging.WARNING
            if _ACCESS_LOG.isEnabledFor(level):
                _ACCESS_LOG.log(level, "%d %s %s (%s) %.2fms", status, self.request.method, self.request.path,
                                self.request.remote_ip, 1000 * (time.perf_counter() - self.started))


def accepts_gzip(value: str) -> bool:
    """Whether an Accept-Encoding header admits gzip (and does not refuse it with q=0)."""
    value = value.lower()
    if "gzip" not in value:
        return False
    for item in value.split(","):
        coding, _, params = item.partition(";")
        if coding.strip() in ("gzip", "x-gzip"):
            quality = params.replace(" ", "").lower()
            return not (quality.startswith("q=0") and quality.strip("q=0.") == "")
    return False


def _http_date() -> str:
    now = int(time.time())
    if now != _DATE[0]:
        _DATE[0], _DATE[1] = now, formatdate(now, usegmt=True)
    return _DATE[1]
