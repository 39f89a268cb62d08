"""The operator dashboard's page: `GET /b3lb/admin/` and its assets (issue 13.3).

The HTML holds the log-in form and empty containers only: nothing about the fleet is in it, and
everything shown comes later from the event stream (b3lb/admin/events.py), opened with the token
the operator pastes. The page's script and style are files of this package (b3lb/admin/static/),
read once at start-up and served from memory; no build step, no CDN, no inline script or style,
so the Content-Security-Policy can allow 'self' only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tornado.web import RequestHandler

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_PATH = "/b3lb/admin/"
STATIC_PREFIX = "/b3lb/admin/static/"

# Everything from this origin only; nothing inline, no frames, no plugins, forms post nowhere else.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
NO_STORE = "no-store, max-age=0"

_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8"}


def apply_security_headers(handler: RequestHandler, cache: str = NO_STORE) -> None:
    """The dashboard's headers on any answer of the page, its assets and its event stream."""
    for name, value in SECURITY_HEADERS.items():
        handler.set_header(name, value)
    handler.set_header("Cache-Control", cache)
    if cache == NO_STORE:
        handler.set_header("Pragma", "no-cache")


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets(folder: Path = STATIC_DIR) -> dict[str, Asset]:
    """The shipped files by name (only these names are served: no path ever reaches the disk)."""
    assets: dict[str, Asset] = {}
    for path in sorted(folder.iterdir()):
        content_type = _TYPES.get(path.suffix)
        if path.is_file() and content_type is not None:
            body = path.read_bytes()
            assets[path.name] = Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    if "index.html" not in assets or "app.js" not in assets or "app.css" not in assets:
        raise RuntimeError(f"incomplete installation: dashboard files missing in {folder}")
    return assets


def render_page(assets: dict[str, Asset]) -> bytes:
    """index.html with each asset's URL made unique by its hash, so an upgrade is never mixed with
    a cached older script or style."""
    html = assets["index.html"].body.decode()
    for name, asset in assets.items():
        if name != "index.html":
            html = html.replace(f'"{name}"', f'"{STATIC_PREFIX}{name}?v={asset.etag.strip(chr(34))}"')
    return html.encode()


class DashboardFiles:
    """The assets and the page, made once per process."""

    def __init__(self, folder: Path = STATIC_DIR) -> None:
        self.assets = load_assets(folder)
        self.page = render_page(self.assets)


class PageHandler(RequestHandler):
    """`GET /b3lb/admin/` (and `/b3lb/admin`): the log-in form and the empty dashboard."""

    def initialize(self, files: DashboardFiles) -> None:
        self.files = files

    def set_default_headers(self) -> None:
        apply_security_headers(self)

    def compute_etag(self) -> None:
        return None

    def get(self) -> None:
        if not self.request.path.endswith("/"):
            # Relative references in the page resolve against the folder, so the folder is the page.
            self.redirect(PAGE_PATH, permanent=False)
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(self.files.page)

    def head(self) -> None:
        self.get()


class StaticHandler(RequestHandler):
    """`GET /b3lb/admin/static/{name}`: one of the shipped assets, else 404."""

    def initialize(self, files: DashboardFiles) -> None:
        self.files = files

    def set_default_headers(self) -> None:
        apply_security_headers(self, cache="no-cache")  # revalidated by ETag; no data in them

    def compute_etag(self) -> None:
        return None

    def get(self, name: str) -> None:
        asset = self.files.assets.get(name)
        if asset is None or name == "index.html":
            self.set_status(404)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("Not Found")
            return
        self.set_header("ETag", asset.etag)
        if asset.etag in self.request.headers.get("If-None-Match", ""):
            self.set_status(304)
            self.finish()
            return
        self.set_header("Content-Type", asset.content_type)
        self.finish(asset.body)


def routes(files: DashboardFiles | None = None) -> list[tuple[str, type[RequestHandler], dict[str, object]]]:
    deps: dict[str, object] = {"files": files or DashboardFiles()}
    return [
        (r"/b3lb/admin/?", PageHandler, deps),
        (r"/b3lb/admin/static/([a-z0-9_-]+\.[a-z]+)", StaticHandler, deps),
    ]
