"""Helpers shared by the dashboard tests (tests/test_admin_page*.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from b3lb.admin import tokens
from b3lb.admin.events import Dashboard
from b3lb.testing.harness import Harness

WAIT = 20.0  # seconds a test waits for something before it fails (a hang guard, not a timing assertion)


async def make_token(h: Harness, name: str, scope: str, tenant: str | None = None) -> str:
    """A bearer token made as `b3lb token add` makes it."""
    assert h.pool is not None
    async with h.pool.acquire() as conn, conn.transaction():
        token, _ = await tokens.token_add(conn, name, scope, tenant)
    return token


def dashboard_of(h: Harness) -> Dashboard:
    """The Dashboard of the harness's application (tests shorten its tick)."""
    assert h.server is not None
    dashboard = h.server.request_callback.dashboard  # type: ignore[attr-defined]
    assert dashboard is not None
    return dashboard


async def wait_for(condition: Callable[[], object], what: str) -> None:
    for _ in range(int(WAIT / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting: {what}")
