"""What every command module of the `b3lb` console script shares (b3lb/admin/cli.py and the cli_*.py
modules it hooks in): the parser class, option types built from b3lb/validation.py's rules, the
builders of command groups and leaves, the runner of an admin command (one transaction), and the
audit row every CLI write gets inside that transaction.

A leaf's runner is `async (conn, args, config) -> result`; `args.then`, when set, runs after the
commit (e.g. `recording delete` purges files only once the DELETING mark is committed).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import asyncpg

from b3lb import migrate as migrations
from b3lb import validation as V
from b3lb.admin import audit
from b3lb.admin.common import AdminError
from b3lb.admin.output import show_rows
from b3lb.admin.recordings import LIST_LIMIT, parse_set_id
from b3lb.config import Config, parse_workers
from b3lb.db import Database, Q
from b3lb.models import secret_label

Runner = Callable[[asyncpg.Connection, argparse.Namespace, Config], Awaitable[Any]]
Shower = Callable[[Any, bool], None]


class UsageError(Exception):
    """Bad command line; exit status 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are exceptions, reported as one `error: ` line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def typed(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """An argparse type that keeps the validator's message."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


# Option types: the rules of b3lb/validation.py, so argparse names the option in the message.
TENANT = typed(V.parse_tenant_slug, "tenant slug")
NODE_SLUG = typed(V.NODE_SLUG.parse, "node slug")
NAME = typed(V.NAME.parse, "name")
HOST = typed(V.HOST.parse, "host name")
NODE_SECRET = typed(V.NODE_SECRET.parse, "secret")
BBB_ENDPOINT = typed(V.BBB_ENDPOINT.parse, "path")
LOAD_ENDPOINT = typed(V.LOAD_ENDPOINT.parse, "path")
LIMIT = typed(V.LIMIT.parse, "number")
ROW_ID = typed(V.ROW_ID.parse, "number")
PIXELS = typed(V.PIXELS.parse, "number")
FACTOR = typed(V.FACTOR.parse, "factor")
CPU_ITERATIONS = typed(V.CPU_ITERATIONS.parse, "number")
CPU_MAXIMUM = typed(V.CPU_MAXIMUM.parse, "number")
PORT = typed(V.PORT.parse, "port")
SHA = typed(V.SHA.parse, "algorithm")
PROTOCOL = typed(V.PROTOCOL.parse, "protocol")
SUB_IDS = typed(V.parse_sub_ids, "sub-id")
SECRET_LABEL = typed(V.parse_secret_label, "secret")
PARAMETER_NAME = typed(V.PARAMETER_NAME.parse, "parameter name")
PARAMETER_VALUE = typed(V.PARAMETER_VALUE.parse, "value")
MEETING_ID = typed(V.MEETING_ID.parse, "meeting ID")
RECORD_SET = typed(parse_set_id, "record set ID")
SET_LIMIT = typed(LIST_LIMIT.parse, "number")
BOOL = typed(V.parse_bool, "boolean")
WORKERS = typed(parse_workers, "number")
HOLD_DAYS = typed(V.HOLD_DAYS.parse, "number")
DESCRIPTION = typed(V.DESCRIPTION.parse, "text")
HOLD_HELP = (f"days recordings are kept, 0..{V.MAX_HOLD_DAYS}; the secret's and the tenant's together: the larger "
             "if either is 0, else the smaller (0 and 0: deleted at the next housekeeping run)")
DESCRIPTION_HELP = f"what the secret is for, up to {V.MAX_TEXT} characters ('' clears it)"


# Command groups and leaves -------------------------------------------------------------------

COMMON = Parser(add_help=False)
COMMON.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
COMMON.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="configuration file")


def group(sub: Any, name: str, help_text: str) -> Any:
    """A command group (`b3lb NAME COMMAND`); returns its subcommand list for `leaf`."""
    parser = sub.add_parser(name, help=help_text, description=help_text)
    commands = parser.add_subparsers(title="commands", dest=f"{name}_command", metavar="COMMAND")
    commands.required = True
    return commands


def leaf(sub: Any, name: str, help_text: str, run: Runner, show: Shower = show_rows) -> Parser:
    """An admin command: `run` in one transaction with its audit row, then `show` prints the result."""
    parser: Parser = sub.add_parser(name, help=help_text, description=help_text, parents=[COMMON])
    parser.set_defaults(handler=run_admin, run=run, show=show)
    return parser


# Running commands --------------------------------------------------------------------------


async def ensure_schema(conn: asyncpg.Connection, embedded: bool) -> None:
    if not await migrations.pending(conn):
        return
    if not embedded:
        raise AdminError("database schema is not up to date: run 'b3lb migrate'")
    for applied in await migrations.migrate(conn):
        print(f"note: applied migration {applied.name} to the embedded database", file=sys.stderr)


async def _admin_command(config: Config, args: argparse.Namespace) -> Any:
    db = Database(config)
    try:
        pool = await db.open(min_size=1, max_size=2)
        async with pool.acquire() as conn:
            await ensure_schema(conn, embedded=db.embedded is not None)
            async with conn.transaction():
                result = await args.run(conn, args, config)
                await audit_command(conn, args)  # every write in the audit log, as cli:<user>
            then = getattr(args, "then", None)  # work that must follow the commit (recording delete)
            return result if then is None else await then(conn, args, config, result)
    finally:
        await db.close()


def run_admin(config: Config, args: argparse.Namespace) -> int:
    result = asyncio.run(_admin_command(config, args))
    args.show(result, args.json)
    return 0


# The audit row of every CLI write ------------------------------------------------------------

READ_VERBS = frozenset({"list", "show", "where"})
# Arguments that are the command's machinery, not what it changed.
_MACHINERY = frozenset({"handler", "run", "show", "then", "json", "config", "command", "needs_sql"})


async def audit_command(conn: asyncpg.Connection, args: argparse.Namespace) -> None:
    """Log a CLI write in its own transaction (reads and commands that logged themselves excepted)."""
    command = getattr(args, "command", None)
    verb = getattr(args, f"{command}_command", None)
    if command is None or verb is None or verb in READ_VERBS:
        return
    if await conn.fetchval(Q.audit_in_transaction):
        return
    target, tenant = _subject(args)
    if tenant is None and command == "recording":  # args.id: the set's public_id, never its nonce
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
