"""b3lb/admin/tokens.py and b3lb/admin/audit.py against a real PostgreSQL: hashing, scopes, expiry, audit."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from b3lb.admin import audit, tokens
from b3lb.admin import fleet as admin
from b3lb.admin import tenants as admin_tenant
from b3lb.admin.common import AdminError
from b3lb.admin.tenants import TenantSettings


def in_db(url: str, body: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await body(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


async def _tenant(conn: asyncpg.Connection, slug: str) -> None:
    if not await conn.fetchval("SELECT count(*) FROM cluster_group WHERE name = 'prod'"):
        await admin.cluster_group_add(conn, "prod")
    await admin_tenant.tenant_add(conn, slug, TenantSettings(cluster_group="prod"))


def test_token_is_shown_once_and_only_its_hash_is_stored(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        await _tenant(conn, "ABC")
        token, rows = await tokens.token_add(conn, "ops", "write")
        assert token.startswith("b3lb_") and len(token) == 48
        assert rows[0]["name"] == "ops" and rows[0]["scope"] == "write" and rows[0]["state"] == "active"
        stored = await conn.fetchval("SELECT token_hash FROM admin_token WHERE name = 'ops'")
        assert stored == tokens.token_hash(token) and token.encode() not in stored
        dump = str(await conn.fetch("SELECT * FROM admin_token"))
        assert token not in dump
        who = await tokens.authenticate(conn, token)
        assert who == tokens.Principal("ops", "write", None, None)
        assert who.allows("read") and who.allows("write") and not who.allows("admin")
        assert await tokens.authenticate(conn, token + "x") is None
        assert await tokens.authenticate(conn, "b3lb_" + "A" * 43) is None
        assert await tokens.authenticate(conn, "") is None
        assert await tokens.authenticate(conn, "b3lb_" + "x" * 5000) is None

        tenant_token, _ = await tokens.token_add(conn, "abc-reader", "read", tenant="abc", days=30)
        reader = await tokens.authenticate(conn, tenant_token)
        assert reader is not None and reader.tenant == "ABC" and reader.tenant_id is not None
        assert reader.sees_tenant("abc") and not reader.sees_tenant("XYZ") and not reader.sees_tenant(None)
        assert (await tokens.token_list(conn, tenant_id=reader.tenant_id))[0]["name"] == "abc-reader"

    in_db(db_url, body)


def test_expired_and_revoked_tokens_open_nothing(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        first, _ = await tokens.token_add(conn, "first", "admin")
        second, _ = await tokens.token_add(conn, "second", "read")
        assert (await tokens.token_expire(conn, "first"))[0]["state"] == "expired"
        assert await tokens.authenticate(conn, first) is None
        assert (await tokens.token_revoke(conn, "second"))[0]["state"] == "revoked"
        assert await tokens.authenticate(conn, second) is None
        with pytest.raises(AdminError, match="no usable token"):
            await tokens.token_revoke(conn, "second")
        with pytest.raises(AdminError, match="no usable token"):
            await tokens.token_expire(conn, "nobody")

    in_db(db_url, body)


def test_bad_token_input_is_refused_without_writing(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        await tokens.token_add(conn, "ops", "read")
        with pytest.raises(AdminError, match="exists already"):
            await tokens.token_add(conn, "ops", "read")
        for name, scope, tenant, days, message in (
            ("a b", "read", None, None, "^name: "),
            ("x" * 101, "read", None, None, "^name: must be 1 to 100"),
            ("ok", "root", None, None, "^scope: choose one of read, write, admin"),
            ("ok", "read", "NOPE1", None, "^tenant: "),
            ("ok", "read", "NOPE", None, "no tenant"),
            ("ok", "read", None, 0, "^days: .*from 1 to 36500"),
        ):
            with pytest.raises((ValueError, AdminError), match=message):
                await tokens.token_add(conn, name, scope, tenant, days)
        assert [row["name"] for row in await tokens.token_list(conn)] == ["ops"]

    in_db(db_url, body)


def test_expiry_is_on_the_database_clock_with_one_days_rule(db_url: str) -> None:
    """token add --days and token expire --days count from the database's now(), as token_list's state
    does, and share one bound (add: 1.., expire: 0..)."""

    async def body(conn: asyncpg.Connection) -> None:
        async with conn.transaction():  # now() is the transaction's start: exact equality
            await tokens.token_add(conn, "ci", "read", days=3)
            assert await conn.fetchval("SELECT expires_at = now() + interval '3 days' FROM admin_token") is True
            await tokens.token_expire(conn, "ci", 2)
            assert await conn.fetchval("SELECT expires_at = now() + interval '2 days' FROM admin_token") is True
        for days, message in ((tokens.MAX_DAYS + 1, "^days: .*from 1 to 36500"), (0, "^days: .*from 1 to")):
            with pytest.raises(ValueError, match=message):
                await tokens.token_add(conn, "x", "read", days=days)
        with pytest.raises(ValueError, match="^days: .*from 0 to 36500"):
            await tokens.token_expire(conn, "ci", tokens.MAX_DAYS + 1)
        assert tokens.VALID_DAYS.high == tokens.EXPIRE_DAYS.high == tokens.MAX_DAYS and tokens.EXPIRE_DAYS.low == 0
        (row,) = await tokens.token_list(conn)
        assert row["state"] == "active"

    in_db(db_url, body)


def test_bearer_header_parsing() -> None:
    assert tokens.bearer("Bearer b3lb_abc") == "b3lb_abc"
    assert tokens.bearer("bearer   b3lb_abc ") == "b3lb_abc"
    assert tokens.bearer("Basic b3lb_abc") == ""
    assert tokens.bearer(None) == "" and tokens.bearer("") == ""


def test_audit_rows_carry_the_actor_and_stay_with_their_transaction(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await audit.record(conn, "token:ops", "node.drain", "main/n1", None, {"meetings": 3})
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await audit.record(conn, "token:ops", "node.panic", "main/n1")
                raise RuntimeError("the write failed")
        rows = await audit.audit_list(conn)
        assert [(r["actor"], r["action"], r["target"], r["detail"]) for r in rows] == [
            ("token:ops", "node.drain", "main/n1", {"meetings": 3})
        ]
        assert audit.cli_actor().startswith("cli:")

    in_db(db_url, body)
