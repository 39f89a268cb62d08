"""`b3lb recordprofile link|unlink|list`: which recording profiles a tenant's or a secret's recordings get.

A record set is rendered with the profiles linked to its secret when there are such links, else
with those linked to its tenant, else with every profile (b3lb/render/jobs.py `profiles`). A link
names a profile and exactly one of a tenant (`--tenant ABC`) or a secret (`--secret ABC-001`).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from b3lb.admin.common import AdminError, NotFound, Row
from b3lb.admin.output import print_json, print_table
from b3lb.admin.tenants import record_profile_list, secret_by_label, tenant_by_slug
from b3lb.db import Q
from b3lb.models import secret_label


async def _profile_id(conn: asyncpg.Connection, name: str) -> int:
    row = await conn.fetchrow(Q.admin_record_profile_by_name, name)
    if row is None:
        raise NotFound(f"no recording profile named {name!r} (see 'b3lb recordprofile list')")
    return int(row["id"])


async def _owner(conn: asyncpg.Connection, tenant: str | None, secret: tuple[str, int] | None) -> tuple[
        int | None, int | None, str]:  # fmt: skip
    """(tenant_id, secret_id, label) of the link's owner: exactly one of tenant and secret."""
    if (tenant is None) == (secret is None):
        raise ValueError("give either --tenant TENANT or --secret TENANT-NNN")
    if tenant is not None:
        return int((await tenant_by_slug(conn, tenant))["id"]), None, f"tenant {tenant}"
    assert secret is not None
    row = await secret_by_label(conn, *secret)
    return None, int(row["id"]), f"secret {secret_label(*secret)}"


async def profile_list(conn: asyncpg.Connection) -> list[Row]:
    """Every profile with the tenants and secrets linked to it: `tenant:ABC`, `secret:ABC-001`
    (none: the profile is rendered for everyone without links)."""
    links: dict[str, list[str]] = {}
    for row in await conn.fetch(Q.render_link_list):
        sub_id = row["sub_id"]
        label = f"tenant:{row['slug']}" if sub_id is None else f"secret:{secret_label(row['slug'], sub_id)}"
        links.setdefault(row["profile"], []).append(label)
    return [{**row, "links": links.get(row["name"], [])} for row in await record_profile_list(conn)]


async def _profile_shown(conn: asyncpg.Connection, name: str) -> list[Row]:
    return [row for row in await profile_list(conn) if row["name"] == name]


async def profile_link(
    conn: asyncpg.Connection, name: str, tenant: str | None = None, secret: tuple[str, int] | None = None
) -> list[Row]:
    profile_id = await _profile_id(conn, name)
    tenant_id, secret_id, label = await _owner(conn, tenant, secret)
    if await conn.fetchval(Q.render_link_add, profile_id, tenant_id, secret_id) is None:
        raise AdminError(f"recording profile {name!r} is already linked to {label}")
    return await _profile_shown(conn, name)


async def profile_unlink(
    conn: asyncpg.Connection, name: str, tenant: str | None = None, secret: tuple[str, int] | None = None
) -> list[Row]:
    profile_id = await _profile_id(conn, name)
    tenant_id, secret_id, label = await _owner(conn, tenant, secret)
    if await conn.fetchval(Q.render_link_remove, profile_id, tenant_id, secret_id) is None:
        raise AdminError(f"recording profile {name!r} is not linked to {label}")
    return await _profile_shown(conn, name)


def show_profiles(rows: Any, as_json: bool) -> None:
    """JSON keeps `links` a list; the table joins it with commas (`-`: not linked)."""
    if as_json:
        print_json(rows)
    else:
        print_table([{**row, "links": ", ".join(row["links"]) or None} for row in rows])
