"""Helpers of the admin API tests (tests/test_admin_api*.py): the real app on a seeded database in
front of fake BBB nodes (b3lb/testing/harness.py), tokens made with b3lb/admin/tokens.py, and
requests through Tornado's HTTP client."""

from __future__ import annotations

import asyncio
import re
from contextlib import asynccontextmanager
from typing import Any

import orjson
from tornado.httpclient import HTTPResponse

from b3lb.admin import tokens
from b3lb.admin.api import ENDPOINTS
from b3lb.admin.openapi import EVENTS_PATH, OPENAPI_PATH
from b3lb.testing.harness import BASE_DOMAIN, Harness

API = "/b3lb/admin/api/v1"
WAIT = 10.0  # seconds a test waits for the event stream's first bytes (a hang, not a timing check)
# (regex of a concrete path below API, template as the OpenAPI document names it)
TEMPLATES = [(re.compile(re.sub(r"\{\w+\}", "[^/]+", e.path) + "/?"), e.path) for e in ENDPOINTS] + [
    (re.compile(re.escape(OPENAPI_PATH)), OPENAPI_PATH), (re.compile(re.escape(EVENTS_PATH) + "/?"), EVENTS_PATH)]


def template_of(path: str) -> str | None:
    """The documented path template a request path (below API, query included or not) belongs to."""
    bare = path.partition("?")[0]
    return next((template for pattern, template in TEMPLATES if pattern.fullmatch(bare)), None)


class Admin:
    """A harness with tenants ABC and XYZ and one token of each kind (names are the dict keys)."""

    def __init__(self, h: Harness, made: dict[str, str]) -> None:
        self.h = h
        self.tokens = made
        self.succeeded: set[tuple[str, str]] = set()  # (method, template) of every 2xx answer
        self.answers: list[tuple[str, str, bytes]] = []  # (method, path, body) of every answer

    @property
    def pool(self) -> Any:
        assert self.h.pool is not None
        return self.h.pool

    async def raw(self, method: str, path: str, *, token: str | None = "admin", body: bytes | None = None,
                  headers: dict[str, str] | None = None) -> HTTPResponse:  # fmt: skip
        """`token`: a key of `tokens`, or a literal Authorization value when it has a space, or None."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = token if " " in token else f"Bearer {self.tokens[token]}"
        response = await self.h.request(API + path, method=method, body=body, headers=sent)
        self.answers.append((method, path, response.body or b""))
        template = template_of(path)
        if 200 <= response.code < 300 and template is not None:
            self.succeeded.add((method, template))
        return response

    async def events(self, token: str = "reader") -> tuple[int, dict[str, str], bytes]:
        """(status, headers, the first event frame) of the dashboard's event stream, then the connection closes.
        A plain socket with HTTP/1.0: the stream never ends by itself."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.h.port)
        try:
            writer.write(f"GET {API}{EVENTS_PATH} HTTP/1.0\r\nHost: {BASE_DOMAIN}\r\n"
                         f"Authorization: Bearer {self.tokens[token]}\r\n\r\n".encode())
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)).decode("latin-1").split("\r\n")
            status = int(head[0].split()[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
            first = b""
            for _ in range(5 if status == 200 else 0):  # past a `retry:` or comment frame to the first event
                first = await asyncio.wait_for(reader.readuntil(b"\n\n"), WAIT)
                if first.startswith(b"event: "):
                    break
        finally:
            writer.close()
        self.answers.append(("GET", EVENTS_PATH, first))
        if status == 200:
            self.succeeded.add(("GET", EVENTS_PATH))
        return status, headers, first

    async def call(self, method: str, path: str, body: Any = None, *, token: str | None = "admin") -> tuple[int, Any]:
        """(status, parsed JSON answer) of one request; `body` is sent as JSON when not None."""
        data = None if body is None else orjson.dumps(body)
        response = await self.raw(method, path, token=token, body=data,
                                  headers={"Content-Type": "application/json"} if data is not None else None)
        assert response.headers["Content-Type"] == "application/json", response.body
        return response.code, orjson.loads(response.body)

    async def ok(self, method: str, path: str, body: Any = None, *, token: str = "admin", status: int = 200) -> Any:
        code, answer = await self.call(method, path, body, token=token)
        assert code == status, (code, answer)
        return answer["data"]

    async def error(self, status: int, method: str, path: str, body: Any = None, *, token: str | None = "admin",
                    field: str | None = None) -> str:  # fmt: skip
        """The message of an expected error answer (and its field, for a 400)."""
        code, answer = await self.call(method, path, body, token=token)
        assert code == status, (code, answer)
        assert set(answer) <= {"error", "message", "field"} and answer["message"], answer
        if field is not None:
            assert answer.get("field") == field, answer
        return str(answer["message"])

    async def audit_rows(self, action: str | None = None) -> list[dict[str, Any]]:
        rows = await self.pool.fetch("SELECT actor, tenant, action, target, detail::text AS detail FROM admin_audit "
                                     "ORDER BY id")
        return [dict(r) | {"detail": orjson.loads(r["detail"])} for r in rows
                if action is None or r["action"] == action]

    async def count(self, table: str) -> int:
        return int(await self.pool.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608 - test tables


TOKENS = {
    "admin": ("admin", None),
    "writer": ("write", None),
    "reader": ("read", None),
    "abc": ("write", "ABC"),  # tenant ABC, write scope
    "abc-admin": ("admin", "ABC"),
    "abc-reader": ("read", "ABC"),
}


@asynccontextmanager
async def admin_api(db_url: str, **options: Any):  # noqa: ANN201 - an async context manager of Admin
    """`async with admin_api(db_url) as api:` the app with tenants ABC and XYZ and the TOKENS."""
    options.setdefault("tenants", ("ABC", "XYZ"))
    async with Harness(db_url, **options) as h:
        made: dict[str, str] = {}
        assert h.pool is not None
        async with h.pool.acquire() as conn:
            for name, (scope, tenant) in TOKENS.items():
                made[name], _ = await tokens.token_add(conn, name, scope, tenant)
        yield Admin(h, made)
