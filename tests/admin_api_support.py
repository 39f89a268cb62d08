"""Helpers of the admin API tests (tests/test_admin_api*.py): the real app on a seeded database in
front of fake BBB nodes (b3lb/testing/harness.py), tokens made with b3lb/admin/tokens.py, and
requests through Tornado's HTTP client."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import orjson
from tornado.httpclient import HTTPResponse

from b3lb.admin import tokens
from b3lb.testing.harness import Harness

API = "/b3lb/admin/api/v1"


class Admin:
    """A harness with tenants ABC and XYZ and one token of each kind (names are the dict keys)."""

    def __init__(self, h: Harness, made: dict[str, str]) -> None:
        self.h = h
        self.tokens = made

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
        return await self.h.request(API + path, method=method, body=body, headers=sent)

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
