"""Tenant commands of the `b3lb` console script (hooked into b3lb/admin/cli.py): `tenant`, `secret`
(with `secret set` from cli_access.py), `parameter`, `asset` and `recordprofile` (with its links from
cli_render.py). The operations are b3lb/admin/tenants.py's, which the admin API calls too.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import asyncpg

from b3lb import validation as V
from b3lb.admin import cli_access, cli_render
from b3lb.admin import tenants as admin_tenant
from b3lb.admin.cli_common import (
    BOOL,
    DESCRIPTION,
    DESCRIPTION_HELP,
    HOLD_DAYS,
    HOLD_HELP,
    LIMIT,
    NAME,
    PARAMETER_NAME,
    PARAMETER_VALUE,
    PIXELS,
    ROW_ID,
    SECRET_LABEL,
    SUB_IDS,
    TENANT,
    Parser,
    group,
    leaf,
)
from b3lb.admin.common import Row
from b3lb.admin.output import show_new_secret, show_tenant
from b3lb.admin.tenants import ParameterRule, ProfileSettings, SecretSettings, TenantSettings
from b3lb.config import Config


def add_tenant_commands(sub: Any) -> None:
    """Every command group of this module, in the order `b3lb --help` lists them."""
    for add in (_add_tenant, _add_secret, _add_parameter, _add_asset, _add_record_profile):
        add(sub)


# b3lb tenant -------------------------------------------------------------------------------


def _tenant_options(parser: Parser, add: bool) -> None:
    parser.add_argument("--clustergroup", type=NAME, required=add, metavar="NAME", help="cluster group")
    limits = f"0..{V.MAX_LIMIT}, 0: unlimited"
    parser.add_argument("--attendee-limit", type=LIMIT, metavar="N", help=f"max attendees ({limits})")
    parser.add_argument("--meeting-limit", type=LIMIT, metavar="N", help=f"max meetings ({limits})")
    parser.add_argument("--record-by-default", action=argparse.BooleanOptionalAction, help="record by default")
    parser.add_argument("--hold-time-days", type=HOLD_DAYS, metavar="N", help=HOLD_HELP)


def _tenant_settings(args: argparse.Namespace) -> TenantSettings:
    return TenantSettings(args.clustergroup, args.attendee_limit, args.meeting_limit, args.record_by_default,
                          args.hold_time_days)


def _add_tenant(sub: Any) -> None:
    commands = group(sub, "tenant", "tenants (SLUG: 2-10 letters, stored upper-case)")
    p = leaf(commands, "add", "add a tenant (then create its secret: b3lb secret add SLUG --sub-id 0)",
             lambda c, a, _: admin_tenant.tenant_add(c, a.slug, _tenant_settings(a)))
    p.add_argument("slug", type=TENANT)
    _tenant_options(p, add=True)
    leaf(commands, "list", "list tenants", lambda c, a, _: admin_tenant.tenant_list(c))
    p = leaf(commands, "set", "change a tenant",
             lambda c, a, _: admin_tenant.tenant_set(c, a.slug, _tenant_settings(a)))
    p.add_argument("slug", type=TENANT)
    _tenant_options(p, add=False)
    p = leaf(commands, "show", "show a tenant with its stats token, secrets and API endpoints",
             lambda c, a, cfg: admin_tenant.tenant_show(c, a.slug, cfg.server.public_scheme,
                                                        cfg.server.api_base_domain),
             show=show_tenant)
    p.add_argument("slug", type=TENANT)
    p = leaf(commands, "remove", "remove a tenant with its secrets, rules and assets",
             lambda c, a, _: admin_tenant.tenant_remove(c, a.slug, a.force))
    p.add_argument("slug", type=TENANT)
    p.add_argument("--force", action="store_true", help="even while it has meetings")


# b3lb secret -------------------------------------------------------------------------------


async def _secret_add(conn: asyncpg.Connection, args: argparse.Namespace, config: Config) -> list[Row]:
    settings = SecretSettings(args.attendee_limit, args.meeting_limit, args.record_by_default, args.hold_time_days,
                              args.description)
    return await admin_tenant.secret_add(conn, args.tenant, args.sub_id, settings)


def _add_secret(sub: Any) -> None:
    commands = group(sub, "secret", "tenant API secrets (SECRET: TENANT for sub-id 0, else TENANT-NNN)")
    p = leaf(commands, "add", "create secrets with random values; nothing is created if any sub-id already exists",
             _secret_add)
    p.add_argument("tenant", type=TENANT)
    p.add_argument("--sub-id", type=SUB_IDS, default=range(1), metavar="N|N-M", help="0..999 (default 0)")
    p.add_argument("--attendee-limit", type=LIMIT, metavar="N", help="override the tenant's limit")
    p.add_argument("--meeting-limit", type=LIMIT, metavar="N", help="override the tenant's limit")
    p.add_argument("--record-by-default", type=BOOL, metavar="true|false", help="override the tenant's choice")
    p.add_argument("--hold-time-days", type=HOLD_DAYS, metavar="N", help=HOLD_HELP + " (default 14)")
    p.add_argument("--description", type=DESCRIPTION, metavar="TEXT", help=DESCRIPTION_HELP)
    p = leaf(commands, "list", "list secrets", lambda c, a, _: admin_tenant.secret_list(c, a.tenant))
    p.add_argument("--tenant", type=TENANT)
    cli_access.add_secret_set(commands)
    p = leaf(commands, "rotate", "new secret value; the old one stays valid as secret2 (prints the new secret)",
             lambda c, a, _: admin_tenant.secret_rotate(c, *a.secret), show=show_new_secret)
    p.add_argument("secret", type=SECRET_LABEL)
    p = leaf(commands, "remove", "remove a secret",
             lambda c, a, _: admin_tenant.secret_remove(c, *a.secret, force=a.force))
    p.add_argument("secret", type=SECRET_LABEL)
    p.add_argument("--force", action="store_true", help="even while it has meetings")


# b3lb parameter, asset ---------------------------------------------------------------------


async def _parameter_add(conn: asyncpg.Connection, args: argparse.Namespace, config: Config) -> list[Row]:
    rule = ParameterRule(args.create_join, args.mode, args.name, args.value)
    return await admin_tenant.parameter_add(conn, args.tenant, args.secret, rule)


def _add_parameter(sub: Any) -> None:
    commands = group(sub, "parameter", "parameter rules for create/join calls")
    p = leaf(commands, "add", "add a rule (VALUE required for SET and OVERRIDE)", _parameter_add)
    owner = p.add_mutually_exclusive_group(required=True)
    owner.add_argument("--tenant", type=TENANT, help="rule for all the tenant's secrets")
    owner.add_argument("--secret", type=SECRET_LABEL, metavar="TENANT-NNN", help="rule for one secret")
    p.add_argument("--for", dest="create_join", type=str.upper, choices=admin_tenant.CREATE_JOIN, required=True)
    p.add_argument("--mode", type=str.upper, choices=admin_tenant.MODES, required=True)
    p.add_argument("name", type=PARAMETER_NAME, help="BBB parameter name")
    p.add_argument("value", type=PARAMETER_VALUE, nargs="?", help=f"value (up to {V.MAX_PARAMETER} characters)")
    p = leaf(commands, "list", "list rules", lambda c, a, _: admin_tenant.parameter_list(c, a.tenant))
    p.add_argument("--tenant", type=TENANT)
    p = leaf(commands, "remove", "remove a rule by id", lambda c, a, _: admin_tenant.parameter_remove(c, a.id))
    p.add_argument("id", type=ROW_ID)


def _add_asset(sub: Any) -> None:
    commands = group(sub, "asset", "tenant logo, default slide and CSS")
    p = leaf(commands, "set", "store a file (at most 16 MiB) as the tenant's logo, slide or css",
             lambda c, a, _: admin_tenant.asset_set(c, a.tenant, a.kind, Path(a.file)))
    p.add_argument("tenant", type=TENANT)
    p.add_argument("kind", choices=admin_tenant.ASSET_KINDS)
    p.add_argument("file")
    p = leaf(commands, "clear", "remove an asset", lambda c, a, _: admin_tenant.asset_clear(c, a.tenant, a.kind))
    p.add_argument("tenant", type=TENANT)
    p.add_argument("kind", choices=admin_tenant.ASSET_KINDS)
    leaf(commands, "list", "list stored assets", lambda c, a, _: admin_tenant.asset_list(c))


# b3lb recordprofile ------------------------------------------------------------------------


def _profile_settings(args: argparse.Namespace) -> ProfileSettings:
    return ProfileSettings(
        width=args.width,
        height=args.height,
        webcam_width=args.webcam_width,
        webcam_height=args.webcam_height,
        webcam_stretch=args.webcam_stretch,
        webcam_crop=args.webcam_crop,
        format=args.format,
        annotate=False if args.no_annotate else None,
        backdrop=False if args.no_backdrop else None,
    )


def _add_record_profile(sub: Any) -> None:
    commands = group(sub, "recordprofile", "video rendering profiles for recordings")
    p = leaf(commands, "add", "add a recording profile",
             lambda c, a, _: admin_tenant.record_profile_add(c, a.name, _profile_settings(a)))
    p.add_argument("name", type=NAME)
    for option, default in (("width", 1920), ("height", 1080), ("webcam-width", 320), ("webcam-height", 180)):
        p.add_argument(f"--{option}", type=PIXELS, metavar="N", help=f"pixels, 1..{V.MAX_PIXELS} (default {default})")
    p.add_argument("--webcam-stretch", action="store_true", default=None, help="stretch webcams")
    p.add_argument("--webcam-crop", action="store_true", default=None, help="crop webcams")
    p.add_argument("--format", type=str.upper, choices=admin_tenant.RECORD_FORMATS, help="default MP4")
    p.add_argument("--no-annotate", action="store_true", help="leave out whiteboard annotations")
    p.add_argument("--no-backdrop", action="store_true", help="leave out the backdrop")
    cli_render.add_profile_links(commands)  # list (with links), link, unlink
    p = leaf(commands, "remove", "remove an unused profile",
             lambda c, a, _: admin_tenant.record_profile_remove(c, a.name))
    p.add_argument("name", type=NAME)
