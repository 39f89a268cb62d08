"""Bearer tokens for the admin API and the dashboard (issue 13).

A token is `b3lb_` + 43 URL-safe characters (256 random bits), printed once by `b3lb token add`;
the database keeps only its SHA-256. Scopes nest: read < write < admin. A tenant-scoped token
(`--tenant T`) sees and changes only tenant T's resources; fleet resources (clusters, nodes,
profiles, tokens) need an unscoped token. Tenant API secrets are never looked up here, and a
token never passes as a tenant secret: the BBB API only checks checksums made with secrets.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import asyncpg

from b3lb import validation as V
from b3lb.admin.common import NotFound, Row, expect_unique
from b3lb.admin.tenants import tenant_by_slug
from b3lb.db import Q

PREFIX = "b3lb_"
SCOPES = ("read", "write", "admin")
_RANK = {scope: rank for rank, scope in enumerate(SCOPES)}
TOKEN_NAME = V.Text(max_length=100, spaces=False, pattern=r"[-a-zA-Z0-9_.@]+",
                    hint="letters, digits and - _ . @ only", strip=False)
SCOPE = V.Choice(SCOPES, upper=False)
# How long a token lives: `token add --days` (from 1) and `token expire --days` (0: at once), one bound.
MAX_DAYS = 36_500
VALID_DAYS = V.Whole(1, MAX_DAYS)
EXPIRE_DAYS = V.Whole(0, MAX_DAYS)
# What a presented token may look like at most; anything longer is refused before hashing.
MAX_PRESENTED = 200


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the token's name, scope and tenant (None: the whole fleet)."""

    name: str
    scope: str
    tenant_id: int | None = None
    tenant: str | None = None  # the tenant's slug

    def allows(self, needed: str) -> bool:
        return _RANK[self.scope] >= _RANK[needed]

    def sees_tenant(self, slug: str | None) -> bool:
        """Whether this principal may see a resource of tenant `slug` (None: a fleet resource)."""
        if self.tenant is None:
            return True
        return slug is not None and slug.upper() == self.tenant

    @property
    def actor(self) -> str:
        return f"token:{self.name}"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def looks_like_token(text: str) -> bool:
    return text.startswith(PREFIX) and len(text) <= MAX_PRESENTED and text.isascii() and text.isprintable()


async def authenticate(conn: asyncpg.Connection | asyncpg.Pool, presented: str) -> Principal | None:
    """The principal of a presented token, or None when it is unknown, expired or revoked."""
    if not looks_like_token(presented):
        return None
    row = await conn.fetchrow(Q.token_by_hash, token_hash(presented))
    if row is None or not row["usable"]:
        return None
    await conn.execute(Q.token_touch, row["id"])
    return Principal(row["name"], row["scope"], row["tenant_id"], row["tenant"])


def bearer(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header ('' when there is none)."""
    if not header:
        return ""
    kind, _, value = header.strip().partition(" ")
    return value.strip() if kind.lower() == "bearer" else ""


# Operations (CLI and API) ---------------------------------------------------------------------


async def token_add(
    conn: asyncpg.Connection, name: str, scope: str, tenant: str | None = None, days: int | None = None
) -> tuple[str, list[Row]]:
    """Make a token; returns (the token, shown once, and the row to print)."""
    name = V.check_value("name", TOKEN_NAME, name)
    scope = V.check_value("scope", SCOPE, scope)
    if tenant is not None:
        try:
            slug = V.parse_tenant_slug(tenant)
        except ValueError as exc:
            raise ValueError(f"tenant: {exc}") from None
    tenant_id = (await tenant_by_slug(conn, slug))["id"] if tenant is not None else None
    days = None if days is None else V.check_value("days", VALID_DAYS, days)
    token = new_token()
    with expect_unique(f"a token named {name!r} exists already"):
        await conn.execute(Q.token_insert, name, token_hash(token), scope, tenant_id, days)  # expiry: the DB's clock
    return token, await token_list(conn, only_name=name)


async def token_list(conn: asyncpg.Connection, tenant_id: int | None = None, only_name: str | None = None) -> list[Row]:
    rows = [dict(row) for row in await conn.fetch(Q.token_list, tenant_id)]
    return [row for row in rows if only_name is None or row["name"] == only_name]


async def token_expire(conn: asyncpg.Connection, name: str, days: int = 0) -> list[Row]:
    """Let a token lapse now (days=0) or after `days` days."""
    name = V.check_value("name", TOKEN_NAME, name)
    days = V.check_value("days", EXPIRE_DAYS, days)
    if await conn.fetchval(Q.token_expire, name, days) is None:
        raise NotFound(f"no usable token named {name!r}")
    return await token_list(conn, only_name=name)


async def token_revoke(conn: asyncpg.Connection, name: str) -> list[Row]:
    name = V.check_value("name", TOKEN_NAME, name)
    if await conn.fetchval(Q.token_revoke, name) is None:
        raise NotFound(f"no usable token named {name!r}")
    return await token_list(conn, only_name=name)
