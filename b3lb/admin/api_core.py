"""The machinery of the admin HTTP API (/b3lb/admin/api/v1/): authentication, JSON in and out, errors.

An endpoint is a path template with one `Operation` per HTTP method; the operation names the scope
it needs, whether it touches the fleet (tenant-scoped tokens get 403), its JSON body fields and
query parameters, and the coroutine that does the work through the same functions as the CLI
(b3lb/admin/fleet.py, tenants.py, ...). The route table (b3lb/admin/api.py) and the OpenAPI
document (b3lb/admin/openapi.py) are both made from these declarations, so they cannot disagree.

Answers are `{"data": ...}`; errors `{"error": KIND, "message": ..., "field": ...}`:
ValueError from validation → 400 naming the field, NotFound → 404 (also for another tenant's
resources, so a tenant-scoped token learns nothing about them), any other AdminError → 409, a
constraint the validators did not catch → 409. A body field marked `fleet` (limits, cluster group)
answers 403 naming it to a tenant-scoped token. Every write runs in one transaction together with
its audit row (`Call.write`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import asyncpg
import orjson
from tornado.web import Finish

from b3lb import validation as V
from b3lb.admin import audit, tokens
from b3lb.admin.common import AdminError, NotFound, Row, describe_db_error
from b3lb.admin.tokens import Principal
from b3lb.endpoints import RuntimeHandler
from b3lb.outage import is_database_unavailable

log = logging.getLogger("b3lb.admin.api")

PREFIX = "/b3lb/admin/api/v1"
MAX_PATH_PART = 300  # longer than any name, slug, label or ID
MAX_JSON_BODY = 64 * 1024  # JSON bodies are a few settings; asset uploads have the server's limit
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
# Option names in validation messages ("attendee-limit: ...") that are not the API field's name.
_FIELD_ALIASES = {"clustergroup": "cluster_group", "sub-id": "sub_id"}
_FIELD_PREFIX = re.compile(r"([A-Za-z][-A-Za-z_]{0,40}): ")
# Every answer: JSON is never sniffed into something a browser runs, nor framed.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff",
                    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"}
Answer = Row | list[Row]  # what an operation gives: the rows `--json` prints, or one object


@dataclass(frozen=True)
class Field:
    """A JSON body field or a query parameter: its JSON type(s) and what it means."""

    name: str
    kind: str | tuple[str, ...]
    help: str
    required: bool = False
    choices: tuple[str, ...] = ()
    fleet: bool = False  # a fleet decision (limits, cluster group): 403 for tenant-scoped tokens

    @property
    def kinds(self) -> tuple[str, ...]:
        return (self.kind,) if isinstance(self.kind, str) else self.kind

    def accepts(self, value: Any) -> bool:
        return any(_TYPES[kind](value) for kind in self.kinds)

    def schema(self) -> dict[str, Any]:
        kinds = self.kinds
        shape: dict[str, Any] = {"type": kinds[0] if len(kinds) == 1 else list(kinds), "description": self.help}
        if self.choices:
            shape["enum"] = list(self.choices)
        if self.fleet:
            shape["description"] += " (not for tenant-scoped tokens: 403)"
        return shape


@dataclass(frozen=True)
class Operation:
    """One method of an endpoint. `body` None: no JSON body, none is accepted (see `raw_body` for uploads)."""

    method: str
    summary: str
    run: Callable[[Call], Awaitable[Answer]]
    scope: str = "read"
    fleet: bool = False  # a fleet resource: tenant-scoped tokens get 403
    body: tuple[Field, ...] | None = None
    query: tuple[Field, ...] = ()
    raw_body: str = ""  # media type of a raw body (asset uploads)
    status: int = 200
    refresh: bool = False  # reload this process's in-memory tenants and nodes after the write


@dataclass(frozen=True)
class Endpoint:
    """A path template (`/nodes/{cluster}/{slug}`, below PREFIX) and its operations."""

    path: str
    operations: tuple[Operation, ...]
    params: dict[str, str] = field(default_factory=dict)  # path parameter -> description

    @property
    def pattern(self) -> str:
        return PREFIX + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path) + "/?"

    def operation(self, method: str) -> Operation | None:
        return next((op for op in self.operations if op.method == method), None)

    @property
    def allowed(self) -> str:
        return ", ".join(op.method for op in self.operations)


class ApiFailure(Exception):
    """An answer other than success, raised from deep inside an operation."""

    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.error, self.extra = status, error, extra


def field_of(message: str, default: str) -> tuple[str, str]:
    """(API field name, message) of a validation message `option: text`."""
    match = _FIELD_PREFIX.match(message)
    if match is None:
        return default, message
    option = match.group(1)
    name = _FIELD_ALIASES.get(option, option.lower().replace("-", "_"))
    return name, f"{name}: {message[match.end():]}"  # the CLI's option name becomes the API's field name


def parse_field(name: str, parse: Callable[[str], Any], value: Any) -> Any:
    """`parse(value)` for text input; ValueError naming the field when it is not text or not valid."""
    if not isinstance(value, str):
        raise ValueError(f"{name}: must be text, got {type(value).__name__}")
    try:
        return parse(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


class Call:
    """One API request as the operation sees it: who asks, what they sent, where to write."""

    def __init__(self, handler: EndpointHandler, principal: Principal, body: dict[str, Any],
                 path: dict[str, str]) -> None:  # fmt: skip
        self.handler = handler
        self.runtime = handler.runtime
        self.principal = principal
        self.body = body
        self.path = path
        self.wrote = False

    @property
    def raw_body(self) -> bytes:
        return self.handler.request.body

    def query(self, name: str) -> str | None:
        """A query parameter as sent (Tornado's own getters strip it and blank control characters,
        which would let a value pass that differs from the one checked)."""
        values = self.handler.request.query_arguments.get(name)
        if not values:
            return None
        try:
            return values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{name}: not UTF-8 text") from None

    def query_flag(self, name: str) -> bool:
        """A yes/no query parameter; absent: no."""
        text = self.query(name)
        return False if text is None else parse_field(name, V.parse_bool, text)

    def tenant(self, value: Any, name: str = "tenant") -> str:
        """The tenant slug in `value`; a tenant this token may not see answers as one that does not exist."""
        slug: str = parse_field(name, V.parse_tenant_slug, value)
        if not self.principal.sees_tenant(slug):
            raise NotFound(f"no tenant {slug!r}")
        return slug

    def secret(self, value: Any, name: str = "secret") -> tuple[str, int]:
        """(tenant slug, sub-id) of a secret label `ABC` / `ABC-001` this token may see."""
        slug, sub_id = parse_field(name, V.parse_secret_label, value)
        self.tenant(slug, name)
        return slug, sub_id

    def listed_tenant(self) -> str | None:
        """The `?tenant=` filter of a list; a tenant-scoped token always lists its own tenant."""
        asked = self.query("tenant")
        if self.principal.tenant is None:
            return None if asked is None else self.tenant(asked)
        if asked is not None:
            self.tenant(asked)
        return self.principal.tenant

    @asynccontextmanager
    async def read(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.runtime.pool.acquire() as conn, conn.transaction(readonly=True):
            yield conn

    @asynccontextmanager
    async def write(
        self, action: str, target: str, tenant: str | None = None, detail: dict[str, Any] | None = None
    ) -> AsyncIterator[asyncpg.Connection]:
        """One transaction for the write and its audit row: both are kept, or neither."""
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            yield conn
            shown = self.body if detail is None else detail
            await audit.record(conn, self.principal.actor, action, target, tenant, shown)
        self.wrote = True

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """One transaction for an operation that records its own audit row (b3lb/admin/lifecycle.py
        takes the actor, `self.principal.actor`)."""
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            yield conn
        self.wrote = True


class AdminApiHandler(RuntimeHandler):
    """Base of the admin API's handlers (and of the dashboard's live endpoints): bearer-token
    authentication with 401/403, JSON answers, JSON errors for every status."""

    endpoint: Endpoint | None = None
    allow = ""  # the methods of a handler without an Endpoint, for 405's Allow

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)

    def compute_etag(self) -> None:
        return None

    async def principal(self, needed: str) -> Principal:
        """Who the request acts as; answers 401 (no usable token) or 403 (too little scope) itself."""
        token = tokens.bearer(self.request.headers.get("Authorization"))
        who = await tokens.authenticate(self.runtime.pool, token) if token else None
        if who is None:
            self.set_header("WWW-Authenticate", 'Bearer realm="b3lb admin"')
            self.fail(401, "unauthorized", "an admin token is required: Authorization: Bearer <token> "
                      "(made with 'b3lb token add'; unknown, expired and revoked tokens open nothing)")
        if not who.allows(needed):
            self.fail(403, "forbidden", f"this needs a token with {needed} scope; {who.name!r} has {who.scope}")
        return who

    def send_json(self, status: int, payload: Any) -> None:
        self.set_status(status)
        self.finish(orjson.dumps(payload, default=str))

    def fail(self, status: int, error: str, message: str, **extra: Any) -> NoReturn:
        self.send_json(status, {"error": error, "message": message, **extra})
        raise Finish()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        self.clear()  # drops the Allow, WWW-Authenticate... of an answer that was under way
        if exc is not None and is_database_unavailable(exc):
            self.set_header("Retry-After", "5")
            self.send_json(503, {"error": "unavailable", "message": "the database is unavailable"})
            return
        if status_code == 405:
            self.method_not_allowed()
            return
        error = "internal" if status_code >= 500 else "bad_request"
        self.send_json(status_code, {"error": error, "message": self._reason})

    def method_not_allowed(self) -> None:
        allowed = self.endpoint.allowed if self.endpoint is not None else self.allow
        self.set_header("Allow", allowed)
        self.send_json(405, {"error": "method_not_allowed",
                             "message": f"{self.request.method} is not allowed here; allowed: {allowed or 'none'}"})


class EndpointHandler(AdminApiHandler):
    """Runs the operation of an Endpoint for the request's method."""

    def initialize(self, runtime: Any, endpoint: Endpoint) -> None:  # type: ignore[override]
        super().initialize(runtime)
        self.endpoint = endpoint

    async def get(self, **path: str) -> None:
        await self.dispatch(path)

    post = put = patch = delete = get

    async def dispatch(self, path: dict[str, str]) -> None:
        assert self.endpoint is not None
        op = self.endpoint.operation(self.request.method or "")
        if op is None:
            return self.method_not_allowed()
        principal = await self.principal(op.scope)
        if op.fleet and principal.tenant is not None:
            self.fail(403, "forbidden", f"a token scoped to tenant {principal.tenant} cannot use fleet resources")
        try:
            self.check_path(path)
            self.check_query(op)
            call = Call(self, principal, {} if op.raw_body else self.json_body(op), path)
            self.check_fleet_fields(op, call)
            result = await op.run(call)
        except ApiFailure as exc:
            self.fail(exc.status, exc.error, str(exc), **exc.extra)
        except ValueError as exc:
            name, message = field_of(str(exc), "body")
            self.fail(400, "invalid", message, field=name)
        except NotFound as exc:
            self.fail(404, "not_found", str(exc))
        except AdminError as exc:
            self.fail(409, "conflict", str(exc))
        except asyncpg.IntegrityConstraintViolationError as exc:
            self.fail(409, "conflict", describe_db_error(exc))
        except asyncpg.DataError as exc:  # a value no rule caught that PostgreSQL cannot store (22xxx)
            self.fail(400, "invalid", f"a value the database cannot store: {exc}", field="body")
        if call.wrote and op.refresh:
            await self.refresh_directory()
        self.send_json(op.status, {"data": result})

    @staticmethod
    def check_path(path: dict[str, str]) -> None:
        for name, value in path.items():
            if V.has_control(value) or len(value) > MAX_PATH_PART:
                raise ValueError(f"{name}: at most {MAX_PATH_PART} characters, no control characters")

    def check_query(self, op: Operation) -> None:
        known = {f.name for f in op.query}
        for name, values in self.request.query_arguments.items():
            if name not in known:
                raise ValueError(f"{name[:40]}: unknown query parameter (known: {', '.join(sorted(known)) or 'none'})")
            if b"\x00" in b"".join(values):
                raise ValueError(f"{name}: must not contain NUL characters")

    @staticmethod
    def check_fleet_fields(op: Operation, call: Call) -> None:
        """Limits and cluster groups are the fleet operator's: a tenant-scoped token may not lift its own."""
        if call.principal.tenant is None:
            return
        for spec in op.body or ():
            if spec.fleet and spec.name in call.body:
                raise ApiFailure(403, "forbidden", f"{spec.name}: a token scoped to tenant {call.principal.tenant} "
                                 "cannot change it (a fleet decision)", field=spec.name)

    def json_body(self, op: Operation) -> dict[str, Any]:
        """The request's JSON object, each field of a known name and JSON type, required ones present.
        An operation without declared fields takes no body (empty, or `{}`)."""
        raw = self.request.body
        if len(raw) > MAX_JSON_BODY:
            raise ApiFailure(413, "too_large", f"a JSON body is at most {MAX_JSON_BODY} bytes", field="body")
        try:
            data = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"body: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError("body: must be a JSON object")
        fields = {f.name: f for f in op.body or ()}
        for name, value in data.items():
            spec = fields.get(name)
            if spec is None:
                raise ValueError(f"{name[:40]}: unknown field (known: {', '.join(fields) or 'none'})")
            if not spec.accepts(value):
                raise ValueError(f"{name}: must be {' or '.join(spec.kinds)}, got {orjson.dumps(value)[:40]!r}")
            if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold it
                raise ValueError(f"{name}: must not contain NUL characters")
        for spec in fields.values():
            if spec.required and data.get(spec.name) is None:
                raise ValueError(f"{spec.name}: required")
        return data

    async def refresh_directory(self) -> None:
        """This process routes with the change at once (others within api.cache_refresh_interval)."""
        try:
            await self.runtime.refresh_directory()
        except Exception as exc:  # noqa: BLE001 - the write is committed; the periodic refresh will catch up
            log.warning("directory refresh after an admin write failed: %s", exc)


class NotFoundHandler(AdminApiHandler):
    """Any other path under the API: 404 in JSON."""

    def prepare(self) -> None:
        self.fail(404, "not_found", f"no endpoint {self.request.path[:200]!r}; see {PREFIX}/openapi.json")

