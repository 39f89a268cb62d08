"""Admin commands for tenants, secrets, parameter rules, assets and recording profiles.

Same conventions as b3lb/admin/fleet.py: async functions on one connection (inside the CLI's
transaction) returning plain dict rows, AdminError for problems an operator must fix.
"""

from __future__ import annotations

import mimetypes
import secrets as pysecrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg

from b3lb import validation as V
from b3lb.admin.common import AdminError, NotFound, Row, cluster_group_by_name, expect_unique
from b3lb.db import Q
from b3lb.models import secret_label
from b3lb.parameters import check_rule

ASSET_KINDS = ("logo", "slide", "css")
MAX_ASSET_SIZE = 16 * 1024 * 1024
MAX_PARAMETER_VALUE = V.MAX_PARAMETER
CREATE_JOIN = ("CREATE", "JOIN", "BOTH")
MODES = ("BLOCK", "SET", "OVERRIDE")
CREATE_JOIN_RULE = V.Choice(CREATE_JOIN)
MODE_RULE = V.Choice(MODES)
RECORD_FORMATS = ("MP4", "WEBM")


def new_secret() -> str:
    """64 hex characters (256 random bits), the format of tenant API secrets."""
    return pysecrets.token_hex(32)


async def tenant_by_slug(conn: asyncpg.Connection, slug: str) -> asyncpg.Record:
    row = await conn.fetchrow(Q.admin_tenant_by_slug, slug)
    if row is None:
        raise NotFound(f"no tenant {slug!r}")
    return row


async def secret_by_label(conn: asyncpg.Connection, slug: str, sub_id: int) -> asyncpg.Record:
    tenant = await tenant_by_slug(conn, slug)
    row = await conn.fetchrow(Q.admin_secret_by_sub_id, tenant["id"], sub_id)
    if row is None:
        raise NotFound(f"no secret {secret_label(slug, sub_id)}")
    return row


# Tenants -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TenantSettings:
    cluster_group: str | None = None
    attendee_limit: int | None = None
    meeting_limit: int | None = None
    record_by_default: bool | None = None
    hold_time_days: int | None = None  # days recordings are kept (spec 4.10)


async def _tenant_apply(conn: asyncpg.Connection, tenant_id: int, settings: TenantSettings) -> None:
    group_id = None
    if settings.cluster_group is not None:
        group_id = (await cluster_group_by_name(conn, settings.cluster_group))["id"]
    await conn.execute(
        Q.admin_tenant_update,
        tenant_id,
        group_id,
        settings.attendee_limit,
        settings.meeting_limit,
        settings.record_by_default,
        settings.hold_time_days,
    )


async def tenant_list(conn: asyncpg.Connection) -> list[Row]:
    return [dict(row) for row in await conn.fetch(Q.admin_tenant_list)]


async def _tenant_shown(conn: asyncpg.Connection, slug: str) -> list[Row]:
    return [row for row in await tenant_list(conn) if row["slug"] == slug]


async def tenant_add(conn: asyncpg.Connection, slug: str, settings: TenantSettings) -> list[Row]:
    slug = V.parse_tenant_slug(slug)
    settings = V.check_fields(settings, V.TENANT_FIELDS)
    if settings.cluster_group is None:
        raise AdminError("a tenant needs a cluster group (--clustergroup NAME)")
    group = await cluster_group_by_name(conn, settings.cluster_group)
    with expect_unique(f"tenant {slug} already exists"):
        tenant_id = await conn.fetchval(Q.admin_tenant_insert, slug, group["id"])
    await _tenant_apply(conn, tenant_id, settings)
    return await _tenant_shown(conn, slug)


async def tenant_set(conn: asyncpg.Connection, slug: str, settings: TenantSettings) -> list[Row]:
    V.require_change(settings)
    settings = V.check_fields(settings, V.TENANT_FIELDS)
    tenant = await tenant_by_slug(conn, slug)
    await _tenant_apply(conn, tenant["id"], settings)
    return await _tenant_shown(conn, slug)


async def tenant_remove(conn: asyncpg.Connection, slug: str, force: bool = False) -> list[Row]:
    tenant = await tenant_by_slug(conn, slug)
    meetings = await conn.fetchval(Q.admin_tenant_meeting_count, tenant["id"])
    if meetings and not force:
        raise AdminError(f"tenant {slug} still has {meetings} meeting(s): use --force to remove it anyway")
    await conn.execute(Q.admin_tenant_delete, tenant["id"])
    return [{"removed": slug}]


def endpoints(slug: str, sub_id: int, scheme: str, base: str) -> tuple[str, str]:
    """Host-style and path-style API endpoints of one secret."""
    label = secret_label(slug, sub_id).lower()
    return (f"{scheme}://{label}.{base}/bigbluebutton/api/", f"{scheme}://{base}/b3lb/t/{label}/bbb/api/")


async def tenant_show(conn: asyncpg.Connection, slug: str, scheme: str, base: str) -> Row:
    tenant = await tenant_by_slug(conn, slug)
    shown: Row = {
        "slug": tenant["slug"],
        "cluster_group": tenant["cluster_group"],
        "attendee_limit": tenant["attendee_limit"],
        "meeting_limit": tenant["meeting_limit"],
        "record_by_default": tenant["record_by_default"],
        "hold_time_days": tenant["hold_time_days"],
        "stats_token": tenant["stats_token"],
    }
    shown["secrets"] = []
    for row in await conn.fetch(Q.admin_secret_list, slug):
        host, path = endpoints(slug, row["sub_id"], scheme, base)
        shown["secrets"].append(
            {
                "label": secret_label(slug, row["sub_id"]),
                "sub_id": row["sub_id"],
                "host_endpoint": host,
                "path_endpoint": path,
                "secret": row["secret"],
                "secret2": row["secret2"],
            }
        )
    return shown


# Secrets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretSettings:
    attendee_limit: int | None = None
    meeting_limit: int | None = None
    record_by_default: bool | None = None
    hold_time_days: int | None = None  # None: 14 (the schema's default)
    description: str | None = None  # what the secret is for (up to 200 characters, '' clears it)


SECRET_FIELDS = ("attendee_limit", "meeting_limit", "record_by_default", "hold_time_days", "description")


def _secret_row(row: asyncpg.Record) -> Row:
    shown = {"label": secret_label(row["tenant"], row["sub_id"]), **dict(row)}
    del shown["tenant"]
    return shown


async def secret_list(conn: asyncpg.Connection, slug: str | None = None) -> list[Row]:
    if slug is not None:
        await tenant_by_slug(conn, slug)
    return [_secret_row(row) for row in await conn.fetch(Q.admin_secret_list, slug)]


async def secret_add(conn: asyncpg.Connection, slug: str, sub_ids: range, settings: SecretSettings) -> list[Row]:
    """One new secret per sub-id; if any of them exists, none is created."""
    sub_ids = V.check_sub_ids(sub_ids)
    settings = V.check_fields(settings, V.SECRET_FIELDS)
    tenant = await tenant_by_slug(conn, slug)
    taken = await conn.fetch(Q.admin_secret_sub_ids_between, tenant["id"], sub_ids.start, sub_ids.stop - 1)
    if taken:
        labels = ", ".join(secret_label(slug, row["sub_id"]) for row in taken)
        raise AdminError(f"secret already exists: {labels} (nothing created)")
    for sub_id in sub_ids:
        with expect_unique(f"secret {secret_label(slug, sub_id)} already exists"):
            await conn.execute(
                Q.admin_secret_insert,
                tenant["id"],
                sub_id,
                new_secret(),
                settings.attendee_limit,
                settings.meeting_limit,
                settings.record_by_default,
                settings.hold_time_days,
                settings.description,
            )
    return [row for row in await secret_list(conn, slug) if row["sub_id"] in sub_ids]


# Settings `secret set` can hand back to the tenant (NULL in the row: the tenant's value applies).
INHERITABLE = ("attendee_limit", "meeting_limit", "record_by_default")


async def secret_set(
    conn: asyncpg.Connection, slug: str, sub_id: int, settings: SecretSettings, inherit: Iterable[str] = ()
) -> list[Row]:
    """Change a secret's limits, recording choice, hold time and description; `inherit` names settings
    that go back to the tenant's value. Fields left None keep their value."""
    settings = V.check_fields(settings, V.SECRET_FIELDS)
    inherit = frozenset(inherit)
    unknown = sorted(inherit - set(INHERITABLE))
    if unknown:
        raise ValueError(f"inherit: only {', '.join(INHERITABLE)} can be inherited, got {', '.join(unknown)}")
    for name in sorted(inherit):
        if getattr(settings, name) is not None:
            raise ValueError(f"{name.replace('_', '-')}: give a value or inherit it, not both")
    if not inherit:
        V.require_change(settings)
    secret = await secret_by_label(conn, slug, sub_id)
    await conn.execute(
        Q.admin_secret_update,
        secret["id"],
        settings.attendee_limit,
        settings.meeting_limit,
        settings.record_by_default,
        settings.hold_time_days,
        *(name in inherit for name in INHERITABLE),
        settings.description,
    )
    return [row for row in await secret_list(conn, slug) if row["sub_id"] == sub_id]


async def secret_rotate(conn: asyncpg.Connection, slug: str, sub_id: int) -> list[Row]:
    """The current secret becomes secret2 (still accepted), a new one is generated."""
    secret = await secret_by_label(conn, slug, sub_id)
    row = await conn.fetchrow(Q.admin_secret_rotate, secret["id"], new_secret())
    return [{"label": secret_label(slug, sub_id), "secret": row["secret"], "secret2": row["secret2"]}]


async def secret_remove(conn: asyncpg.Connection, slug: str, sub_id: int, force: bool = False) -> list[Row]:
    secret = await secret_by_label(conn, slug, sub_id)
    label = secret_label(slug, sub_id)
    meetings = await conn.fetchval(Q.admin_secret_meeting_count, secret["id"])
    if meetings and not force:
        raise AdminError(f"secret {label} still has {meetings} meeting(s): use --force to remove it anyway")
    await conn.execute(Q.admin_secret_delete, secret["id"])
    return [{"removed": label}]


# Parameter rules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterRule:
    create_join: str
    mode: str
    name: str
    value: str | None = None

    def checked(self) -> ParameterRule:
        """The rule with `for` and `mode` normalised; ValueError naming the field (`for`, `mode`,
        `name`, `value`) for a rule that can never be stored."""
        create_join = V.check_value("for", CREATE_JOIN_RULE, self.create_join)
        mode = V.check_value("mode", MODE_RULE, self.mode)
        V.check_value("name", V.PARAMETER_NAME, self.name)
        if mode == "BLOCK" and self.value is not None:
            raise ValueError("value: a BLOCK rule takes no value")
        if mode != "BLOCK" and self.value is None:
            raise ValueError(f"value: a {mode} rule needs a value")
        if self.value is not None:
            V.check_value("value", V.PARAMETER_VALUE, self.value)
        try:  # without a value only the name is checked: whatever fails after it is the value
            check_rule(create_join, mode, self.name, None)
        except ValueError as exc:
            raise ValueError(f"name: {exc}") from None
        try:
            check_rule(create_join, mode, self.name, self.value)
        except ValueError as exc:
            raise ValueError(f"value: {exc}") from None
        return replace(self, create_join=create_join, mode=mode)


async def parameter_add(
    conn: asyncpg.Connection, tenant: str | None, secret: tuple[str, int] | None, rule: ParameterRule
) -> list[Row]:
    """A rule for a whole tenant or for one secret (tenant slug, sub-id): exactly one of them."""
    if (tenant is None) == (secret is None):
        raise ValueError("tenant: give exactly one of tenant and secret")
    rule = rule.checked()
    slug, sub_id = secret if secret is not None else (str(tenant), None)
    tenant_id, secret_id, owner = (await tenant_by_slug(conn, slug))["id"], None, slug
    if sub_id is not None:
        secret_id = (await secret_by_label(conn, slug, sub_id))["id"]
        tenant_id, owner = None, secret_label(slug, sub_id)
    with expect_unique(f"a {rule.create_join} rule for {rule.name!r} already exists for {owner}"):
        rule_id = await conn.fetchval(
            Q.admin_parameter_insert, tenant_id, secret_id, rule.create_join, rule.mode, rule.name, rule.value or ""
        )
    return [row for row in await parameter_list(conn, slug) if row["id"] == rule_id]


async def parameter_list(conn: asyncpg.Connection, slug: str | None = None) -> list[Row]:
    if slug is not None:
        await tenant_by_slug(conn, slug)
    rows = []
    for row in await conn.fetch(Q.admin_parameter_list, slug):
        owner = row["tenant"] if row["sub_id"] is None else secret_label(row["tenant"], row["sub_id"])
        rows.append(
            {
                "id": row["id"],
                "owner": owner,
                "for": row["create_join"],
                "mode": row["mode"],
                "name": row["name"],
                "value": row["value"],
            }
        )
    return rows


async def parameter_remove(conn: asyncpg.Connection, rule_id: int) -> list[Row]:
    rule_id = V.check_value("id", V.ROW_ID, rule_id)
    if await conn.fetchval(Q.admin_parameter_delete, rule_id) is None:
        raise NotFound(f"no parameter rule with id {rule_id}")
    return [{"removed": rule_id}]


# Assets ------------------------------------------------------------------------------------


def check_asset(kind: str, name: str, data: bytes) -> tuple[str, str, bytes]:
    """(file name, MIME type, bytes) of an asset to store; ValueError naming the field when unusable.
    The CLI (a file) and the admin API (a request body) store assets through this one rule."""
    if kind not in ASSET_KINDS:
        raise ValueError(f"kind: choose one of {', '.join(ASSET_KINDS)}, got {kind[:20]!r}")
    if not isinstance(name, str) or not name.strip() or V.has_control(name) or "/" in name:
        raise ValueError("name: give the file's name, without control characters or '/'")
    if not data:  # `body`: the admin API's name for the file (the CLI shows the file's path instead)
        raise ValueError("body: the file is empty")
    if len(data) > MAX_ASSET_SIZE:
        raise ValueError(f"body: {len(data)} bytes is larger than 16 MiB")
    mime = "text/css" if kind == "css" else mimetypes.guess_type(name)[0] or "application/octet-stream"
    return name[: V.MAX_TEXT], mime[:100], data


def read_asset(kind: str, path: Path) -> tuple[str, str, bytes]:
    """(file name, MIME type, bytes) of an asset file; AdminError when unusable."""
    try:
        size = path.stat().st_size
        if size > MAX_ASSET_SIZE:
            raise AdminError(f"{path}: {size} bytes is larger than 16 MiB")
        data = path.read_bytes()
    except OSError as exc:
        raise AdminError(f"cannot read {path}: {exc.strerror}") from None
    if V.has_control(path.name):
        raise AdminError(f"{path}: rename the file: its name has control characters")
    try:
        return check_asset(kind, path.name, data)
    except ValueError as exc:
        raise AdminError(f"{path}: {str(exc).partition(': ')[2]}") from None


async def asset_list(conn: asyncpg.Connection, slug: str | None = None) -> list[Row]:
    """Stored assets, of every tenant or (slug) of one."""
    if slug is not None:
        await tenant_by_slug(conn, slug)
    return [dict(row) for row in await conn.fetch(Q.admin_asset_list) if slug is None or row["tenant"] == slug]


async def asset_set(conn: asyncpg.Connection, slug: str, kind: str, path: Path) -> list[Row]:
    if kind not in ASSET_KINDS:
        raise AdminError(f"unknown asset {kind!r}: choose {', '.join(ASSET_KINDS)}")
    tenant = await tenant_by_slug(conn, slug)
    name, mime, data = read_asset(kind, path)
    return await _asset_write(conn, tenant, kind, name, mime, data)


async def asset_store(conn: asyncpg.Connection, slug: str, kind: str, name: str, data: bytes) -> list[Row]:
    """Store bytes (the admin API's upload) as the tenant's asset of `kind`, named `name`."""
    name, mime, data = check_asset(kind, name, data)
    tenant = await tenant_by_slug(conn, slug)
    return await _asset_write(conn, tenant, kind, name, mime, data)


async def _asset_write(
    conn: asyncpg.Connection, tenant: asyncpg.Record, kind: str, name: str, mime: str, data: bytes
) -> list[Row]:
    await conn.execute(Q.admin_asset_ensure, tenant["id"])
    await conn.execute(Q.admin_asset_store, tenant["id"], kind, name, mime, data)
    return [row for row in await asset_list(conn, tenant["slug"]) if row["kind"] == kind]


async def asset_clear(conn: asyncpg.Connection, slug: str, kind: str) -> list[Row]:
    if kind not in ASSET_KINDS:
        raise AdminError(f"unknown asset {kind!r}: choose {', '.join(ASSET_KINDS)}")
    tenant = await tenant_by_slug(conn, slug)
    await conn.execute(Q.admin_asset_store, tenant["id"], kind, "", "", None)
    return [{"tenant": slug, "cleared": kind}]


# Recording profiles ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileSettings:
    width: int | None = None
    height: int | None = None
    webcam_width: int | None = None
    webcam_height: int | None = None
    webcam_stretch: bool | None = None
    webcam_crop: bool | None = None
    format: str | None = None
    annotate: bool | None = None
    backdrop: bool | None = None


async def record_profile_list(conn: asyncpg.Connection) -> list[Row]:
    return [dict(row) for row in await conn.fetch(Q.admin_record_profile_list)]


async def record_profile_add(conn: asyncpg.Connection, name: str, settings: ProfileSettings) -> list[Row]:
    name = V.check_value("name", V.NAME, name)
    settings = V.check_fields(settings, V.PROFILE_FIELDS)
    with expect_unique(f"recording profile {name!r} already exists"):
        profile_id = await conn.fetchval(Q.admin_record_profile_insert, name)
    s = settings
    await conn.execute(
        Q.admin_record_profile_update,
        profile_id,
        s.width,
        s.height,
        s.webcam_width,
        s.webcam_height,
        s.webcam_stretch,
        s.webcam_crop,
        s.format,
        s.annotate,
        s.backdrop,
    )
    return [row for row in await record_profile_list(conn) if row["name"] == name]


async def record_profile_by_name(conn: asyncpg.Connection, name: str) -> asyncpg.Record:
    profile = await conn.fetchrow(Q.admin_record_profile_by_name, name)
    if profile is None:
        raise NotFound(f"no recording profile named {name!r} (see 'b3lb recordprofile list')")
    return profile


async def record_profile_remove(conn: asyncpg.Connection, name: str) -> list[Row]:
    profile = await record_profile_by_name(conn, name)
    try:
        await conn.execute(Q.admin_record_profile_delete, profile["id"])
    except asyncpg.ForeignKeyViolationError:
        raise AdminError(f"recording profile {name!r} is still used by rendered recordings") from None
    return [{"removed": name}]
