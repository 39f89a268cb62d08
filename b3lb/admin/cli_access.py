"""Access commands of the `b3lb` console script (hooked into b3lb/admin/cli.py and cli_tenants.py):

- `b3lb token add NAME --scope read|write|admin [--tenant T] [--days N]`: prints the new bearer token
  once (only its SHA-256 is stored); `token list`, `token expire NAME [--days N]`, `token revoke NAME`.
- `b3lb secret set TENANT[-NNN] [--attendee-limit N|inherit] [--meeting-limit N|inherit]
  [--recording on|off|inherit] [--hold-days N] [--description TEXT]`: a secret's limits, recording
  choice, hold time and description (`inherit`: the tenant's value applies again). The admin API's
  PATCH /secrets/{label} calls the same b3lb/admin/tenants.py `secret_set`.

Every CLI write is logged by the shared runner (b3lb/admin/cli_common.py `audit_command`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import asyncpg

from b3lb import validation as V
from b3lb.admin import tenants as admin_tenant
from b3lb.admin import tokens
from b3lb.admin.cli_common import DESCRIPTION, DESCRIPTION_HELP, HOLD_HELP, SECRET_LABEL, TENANT, group, leaf, typed
from b3lb.admin.common import Row
from b3lb.admin.output import print_json
from b3lb.admin.tenants import SecretSettings
from b3lb.config import Config

INHERIT = "inherit"


def _or_inherit(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return INHERIT if text.strip().lower() == INHERIT else parse(text)

    return convert


def _recording(text: str) -> bool | str:
    """on/off (or any word b3lb/validation.py parse_bool takes), or inherit."""
    if text.strip().lower() == INHERIT:
        return INHERIT
    try:
        return V.parse_bool(text)
    except ValueError:
        raise ValueError(f"expected on, off or inherit, got {text[:20]!r}") from None


# b3lb token ----------------------------------------------------------------------------------


def add_token_commands(sub: Any) -> None:
    """The `token` group."""
    commands = group(sub, "token", "bearer tokens for the admin API and the dashboard")
    p = leaf(commands, "add", "make a token and print it once (only its hash is stored)", _token_add,
             show=show_new_token)
    p.add_argument("name", type=typed(tokens.TOKEN_NAME.parse, "name"),
                   help="letters, digits and - _ . @ (up to 100); shown in the audit log")
    p.add_argument("--scope", required=True, choices=tokens.SCOPES,
                   help="read: look; write: change tenants, nodes, meetings...; admin: also manage tokens")
    p.add_argument("--tenant", type=TENANT, help="the token sees and changes only this tenant")
    p.add_argument("--days", type=typed(tokens.VALID_DAYS.parse, "number"), metavar="N",
                   help=f"valid for N days, 1..{tokens.MAX_DAYS} (default: until revoked)")
    leaf(commands, "list", "list tokens (never their values)", lambda c, a, _: tokens.token_list(c))
    p = leaf(commands, "expire", "let a token lapse now, or after --days N",
             lambda c, a, _: tokens.token_expire(c, a.name, a.days))
    p.add_argument("name")
    p.add_argument("--days", type=typed(tokens.EXPIRE_DAYS.parse, "number"), default=0, metavar="N",
                   help=f"from now, 0..{tokens.MAX_DAYS} (default 0: at once)")
    p = leaf(commands, "revoke", "revoke a token for good", lambda c, a, _: tokens.token_revoke(c, a.name))
    p.add_argument("name")


async def _token_add(conn: asyncpg.Connection, args: argparse.Namespace, config: Config) -> tuple[str, list[Row]]:
    return await tokens.token_add(conn, args.name, args.scope, args.tenant, args.days)


def show_new_token(result: tuple[str, list[Row]], as_json: bool) -> None:
    token, rows = result
    if as_json:
        print_json([{**row, "token": token} for row in rows])
    else:
        print(token)
    row = rows[0]
    where = f"tenant {row['tenant']}" if row["tenant"] else "the whole fleet"
    print(f"warning: token {row['name']!r} ({row['scope']} scope, {where}) is shown this once and cannot be shown "
          "again: store it now (send it as 'Authorization: Bearer <token>')", file=sys.stderr)


# b3lb secret set -----------------------------------------------------------------------------


def add_secret_set(commands: Any) -> None:
    """`set` in the `secret` group (b3lb/admin/cli_tenants.py builds the group)."""
    p = leaf(commands, "set", "change a secret's limits, recording choice, hold time ('inherit': the tenant's) "
             "and description", _secret_set)
    p.add_argument("secret", type=SECRET_LABEL, metavar="TENANT[-NNN]")
    limit = typed(_or_inherit(V.LIMIT.parse), "number")
    p.add_argument("--attendee-limit", type=limit, metavar="N|inherit", help="max attendees (0: unlimited)")
    p.add_argument("--meeting-limit", type=limit, metavar="N|inherit", help="max meetings (0: unlimited)")
    p.add_argument("--recording", "--record-by-default", dest="record_by_default", type=typed(_recording, "choice"),
                   metavar="on|off|inherit", help="record meetings by default")
    p.add_argument("--hold-days", "--hold-time-days", dest="hold_time_days",
                   type=typed(V.HOLD_DAYS.parse, "number"), metavar="N", help=HOLD_HELP)
    p.add_argument("--description", type=DESCRIPTION, metavar="TEXT", help=DESCRIPTION_HELP)


async def _secret_set(conn: asyncpg.Connection, args: argparse.Namespace, config: Config) -> list[Row]:
    values = {name: getattr(args, name) for name in admin_tenant.SECRET_FIELDS}
    inherit = [name for name in admin_tenant.INHERITABLE if values[name] == INHERIT]  # a description may say it
    settings = SecretSettings(**{name: None if name in inherit else value for name, value in values.items()})
    return await admin_tenant.secret_set(conn, *args.secret, settings, inherit)
