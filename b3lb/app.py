"""The route table: every URL b3lb answers, and the handler that answers it."""

from __future__ import annotations

from tornado.httputil import HTTPConnection, HTTPMessageDelegate
from tornado.log import access_log
from tornado.web import Application, RequestHandler

from b3lb.admin import api as admin_api
from b3lb.admin import events as admin_events
from b3lb.admin import page as admin_page
from b3lb.api.handler import ApiRouter
from b3lb.callbacks import EndCallbackHandler
from b3lb.endpoints import AssetHandler, PingHandler, StatsHandler
from b3lb.lazyquery import BodyLimit, LazyQueryDelegate
from b3lb.metrics_cache import MetricsCache
from b3lb.metrics_http import MetricsRouter
from b3lb.recordings import upload
from b3lb.recordings.playback import PlaybackHandler
from b3lb.runtime import Runtime

# Call names as B3LB routes them; anything else under the API (e.g. hooks/create) is a 404.
CALL = r"(?P<call>[0-9.a-zA-Z]*)"
TENANT = r"(?P<slug>[a-z]{2,10})(?:-(?P<sub>\d{3}))?"


class NotFoundHandler(RequestHandler):
    def prepare(self) -> None:
        self.set_status(404)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("Not Found")


class B3lbApplication(Application):
    upload_limit: BodyLimit | None = None
    metrics_cache: MetricsCache | None = None  # `b3lb serve` runs its render-ahead task
    dashboard: admin_events.Dashboard | None = None  # the operator page's event stream (b3lb/admin/events.py)

    def body_limit_for(self, path: str) -> BodyLimit | None:
        """Node uploads take archives of gigabytes for up to an hour; every other body has the
        server's limits (lazyquery.py asks before the body is read)."""
        return self.upload_limit if path == upload.UPLOAD_PATH else None

    def start_request(self, server_conn: object, request_conn: HTTPConnection) -> HTTPMessageDelegate:
        return LazyQueryDelegate(self, server_conn, request_conn)

    def log_request(self, handler: RequestHandler) -> None:
        """As Tornado, except that a 503 (the database is down: logged once per outage by
        b3lb/outage.py) is an info line, not an error line per request."""
        if handler.get_status() == 503:
            request = handler.request
            access_log.info("503 %s %s (%s) %.2fms", request.method, request.path, request.remote_ip,
                            1000.0 * request.request_time())
            return
        super().log_request(handler)


def make_app(runtime: Runtime) -> B3lbApplication:
    deps = {"runtime": runtime}
    api = ApiRouter(runtime)  # BBB API calls skip RequestHandler: b3lb/api/handler.py says why
    metrics = MetricsRouter(MetricsCache(runtime))  # served from memory: b3lb/metrics_cache.py
    dashboard = admin_events.start(runtime)  # samples the load history from now on
    routes = [
        (r"/bigbluebutton/api/?", api),
        (rf"/bigbluebutton/api/{CALL}", api),
        (rf"/b3lb/t/{TENANT}/bbb/api/?", api),
        (rf"/b3lb/t/{TENANT}/bbb/api/{CALL}", api),
        (r"/b3lb/ping", PingHandler, deps),
        (r"/b3lb/stats", StatsHandler, deps),
        (rf"/b3lb/t/{TENANT}/stats", StatsHandler, deps),
        (r"/b3lb/metrics", metrics),
        (rf"/b3lb/t/{TENANT}/metrics", metrics),
        (r"/b3lb/b/meeting/end", EndCallbackHandler, deps),
        (r"/b3lb/t/([a-z]{2,10})/(logo|slide|css)", AssetHandler, deps),
        (upload.UPLOAD_PATH, upload.UploadHandler, deps),
        (r"/b3lb/r/(?P<nonce>[a-zA-Z0-9!@*(_)-]+)", PlaybackHandler, deps),
        *admin_page.routes(),
        *admin_events.routes(runtime, dashboard),
        *admin_api.routes(runtime),  # /b3lb/admin/api/v1/ (b3lb/admin/api.py), its catch-all 404 last
    ]
    app = B3lbApplication(routes, default_handler_class=NotFoundHandler, compress_response=False)
    app.upload_limit = upload.body_limit(runtime.config)
    app.metrics_cache = metrics.cache
    app.dashboard = dashboard
    return app
