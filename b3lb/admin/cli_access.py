"""Access commands of the `b3lb` console script (hooked into b3lb/admin/cli.py), and the audit row of
every CLI write:

- `b3lb token add NAME --scope read|write|admin [--tenant T] [--days N]`: prints the new bearer token
  once (only its SHA-256 is stored); `token list`, `token expire NAME [--days N]`, `token revoke NAME`.
- `b3lb secret set TENANT[-NNN] [--attendee-limit N|inherit] [--meeting-limit N|inherit]
  [--recording on|off|inherit] [--hold-days N]`: a secret's limits, recording choice and hold time
  (`inherit`: the tenant's value applies again). The admin API's PATCH /secrets/{label} calls the same
  b3lb/admin/tenants.py `secret_set`.
- `audit_command`: run by the CLI's shared runner inside each command's transaction, it logs every
  write with the actor `cli:<user>` (b3lb/admin/audit.py), as the admin API logs its token's name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import asyncpg

from b3lb import validation as V
from b3lb.admin import audit, tokens
from b3lb.admin import tenants as admin_tenant
from b3lb.admin.output import print_json
from b3lb.admin.tenants import SecretSettings
from b3lb.config import Config
from b3lb.db import Q
from b3lb.models import secret_label

INHERIT = "inherit"
EXPIRE_DAYS = V.Whole(0, tokens.MAX_DAYS.high)
READ_VERBS = frozenset({"list", "show", "where"})
# Arguments that are the command's machinery, not what it changed.
_MACHINERY = frozenset({"handler", "run", "show", "then", "json", "config", "command", "needs_sql"})


def _or_inherit(parse: Any) -> Any:
    def convert(text: str) -> Any:
        return INHERIT if text.strip().lower() == INHERIT else parse(text)

    return convert


def _recording(text: str) -> bool | str:
    word = text.strip().lower()
    if word == INHERIT:
        return INHERIT
    if word in ("on", "true", "yes"):
        return True
    if word in ("off", "false", "no"):
        return False
    raise ValueError(f"expected on, off or inherit, got {text[:20]!r}")


# b3lb token ----------------------------------------------------------------------------------


def add_access_commands(sub: Any) -> None:
    """The `token` group, and `set` in the `secret` group (which b3lb/admin/cli.py made before)."""
    from b3lb.admin.cli import TENANT, _group, _leaf, _typed

    commands = _group(sub, "token", "bearer tokens for the admin API and the dashboard")
    p = _leaf(commands, "add", "make a token and print it once (only its hash is stored)", _token_add,
              show=show_new_token)
    p.add_argument("name", type=_typed(tokens.TOKEN_NAME.parse, "name"),
                   help="letters, digits and - _ . @ (up to 100); shown in the audit log")
    p.add_argument("--scope", required=True, choices=tokens.SCOPES,
                   help="read: look; write: change tenants, nodes, meetings...; admin: also manage tokens")
    p.add_argument("--tenant", type=TENANT, help="the token sees and changes only this tenant")
    p.add_argument("--days", type=_typed(tokens.MAX_DAYS.parse, "number"), metavar="N",
                   help=f"valid for N days, 1..{tokens.MAX_DAYS.high} (default: until revoked)")
    _leaf(commands, "list", "list tokens (never their values)", lambda c, a, _: tokens.token_list(c))
    p = _leaf(commands, "expire", "let a token lapse now, or after --days N",
              lambda c, a, _: tokens.token_expire(c, a.name, a.days))
    p.add_argument("name")
    p.add_argument("--days", type=_typed(EXPIRE_DAYS.parse, "number"), default=0, metavar="N",
                   help=f"from now, 0..{EXPIRE_DAYS.high} (default 0: at once)")
    p = _leaf(commands, "revoke", "revoke a token for good", lambda c, a, _: tokens.token_revoke(c, a.name))
    p.add_argument("name")
    _add_secret_set(_subcommands(sub.choices["secret"]))


def _subcommands(parser: argparse.ArgumentParser) -> Any:
    """The subcommand list of a command group; argparse offers no public way to reach it again."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


async def _token_add(conn: asyncpg.Connection, args: argparse.Namespace, config: Config) -> Any:
    return await tokens.token_add(conn, args.name, args.scope, args.tenant, args.days)


def show_new_token(result: Any, as_json: bool) -> None:
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


def _add_secret_set(commands: Any) -> None:
    from b3lb.admin.cli import HOLD_HELP, SECRET_LABEL, _leaf, _typed

    p = _leaf(commands, "set", "change a secret's limits, recording choice and hold time ('inherit': the tenant's)",
              _secret_set)
    p.add_argument("secret", type=SECRET_LABEL, metavar="TENANT[-NNN]")
    limit = _typed(_or_inherit(V.LIMIT.parse), "number")
    p.add_argument("--attendee-limit", type=limit, metavar="N|inherit", help="max attendees (0: unlimited)")
    p.add_argument("--meeting-limit", type=limit, metavar="N|inherit", help="max meetings (0: unlimited)")
    p.add_argument("--recording", "--record-by-default", dest="record_by_default", type=_typed(_recording, "choice"),
                   metavar="on|off|inherit", help="record meetings by default")
    p.add_argument("--hold-days", "--hold-time-days", dest="hold_time_days",
                   type=_typed(V.HOLD_DAYS.parse, "number"), metavar="N", help=HOLD_HELP)


async def _secret_set(conn: asyncpg.Connection, args: argparse.Namespace, config: Config) -> Any:
    values = {name: getattr(args, name) for name in admin_tenant.SECRET_FIELDS}
    inherit = [name for name, value in values.items() if value == INHERIT]
    settings = SecretSettings(**{name: None if value == INHERIT else value for name, value in values.items()})
    return await admin_tenant.secret_set(conn, *args.secret, settings, inherit)


# The audit row of every CLI write ------------------------------------------------------------


async def audit_command(conn: asyncpg.Connection, args: argparse.Namespace) -> None:
    """Log a CLI write in its own transaction (reads and commands that logged themselves excepted)."""
    command = getattr(args, "command", None)
    verb = getattr(args, f"{command}_command", None)
    if command is None or verb is None or verb in READ_VERBS:
        return
    if await conn.fetchval(Q.audit_in_transaction):
        return
    target, tenant = _subject(args)
    if tenant is None and command == "recording":
        tenant = await conn.fetchval(Q.api_record_set_tenant, args.id) or None
    await audit.record(conn, audit.cli_actor(), f"{command}.{verb}", target, tenant, _detail(args))


def _subject(args: argparse.Namespace) -> tuple[str, str | None]:
    """(target, tenant) of a write, from its arguments."""
    given = vars(args)
    if args.command == "node":  # its --secret is the node's BBB secret, never a target
        node = given.get("node") or f"{given.get('cluster')}/{given.get('slug')}"
        return node, None
    if args.command == "tenant":
        return given["slug"], given["slug"]
    secret, tenant = given.get("secret"), given.get("tenant")
    if isinstance(secret, tuple):
        tenant, owner = secret[0], secret_label(*secret)
    else:
        owner = tenant
    parts = [str(given[key]) for key in ("name", "group", "cluster", "id") if given.get(key) is not None]
    if owner is not None:
        parts.append(owner)
    if given.get("kind"):
        parts.append(given["kind"])
    return "/".join(parts), tenant


def _detail(args: argparse.Namespace) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in _MACHINERY or key.endswith("_command") or value is None or callable(value):
            continue
        if args.command == "node" and key == "secret":
            value = "(changed)"  # a node's secret never goes into the log
        elif isinstance(value, range):
            value = f"{value.start}-{value.stop - 1}"
        elif isinstance(value, tuple):
            value = secret_label(*value)
        elif isinstance(value, Path):
            value = str(value)
        detail[key] = value
    return detail

