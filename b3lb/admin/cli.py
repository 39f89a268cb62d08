"""The `b3lb` console script: the server, migrations and every admin command.

Argument parsing lives here, printing in b3lb/admin/output.py, the rules for every value in
b3lb/validation.py, and the commands themselves in b3lb/admin/fleet.py and b3lb/admin/tenants.py. Each
admin command runs in one transaction, so a failing command writes nothing. Errors are one line
on stderr starting with `error: `; the exit status is 2 for bad usage or configuration and 1
for everything else (an incomplete installation included).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import asyncpg

from b3lb import migrate as migrations
from b3lb import resources
from b3lb import validation as V
from b3lb.admin import cli_access, cli_lifecycle, cli_render, common
from b3lb.admin import fleet as admin
from b3lb.admin import meetings as admin_meeting
from b3lb.admin import recordings as admin_recording
from b3lb.admin import tenants as admin_tenant
from b3lb.admin.common import AdminError
from b3lb.admin.fleet import ClusterSettings, NodeSettings
from b3lb.admin.output import print_json, print_table, show_new_secret, show_rows, show_tenant
from b3lb.admin.tenants import ParameterRule, ProfileSettings, SecretSettings, TenantSettings
from b3lb.config import MAX_WORKERS, Config, ConfigError, load_config, parse_workers
from b3lb.db import Database, DatabaseUnavailable, embedded_data_dir

Runner = Callable[[asyncpg.Connection, argparse.Namespace, Config], Awaitable[Any]]
Shower = Callable[[Any, bool], None]

DESCRIPTION = """\
b3lb: a BigBlueButton API load balancer.

Database: database.url (or DATABASE_URL); when it is empty, b3lb uses an embedded PostgreSQL in
{server.data_dir}/pgdata. Admin commands apply pending migrations to the embedded database by
themselves; with a configured database.url they refuse to run until 'b3lb migrate' was run.
Global options (--config, --json) may come before or after the command.
"""


class UsageError(Exception):
    """Bad command line; exit status 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are exceptions, reported as one `error: ` line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _typed(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """An argparse type that keeps the validator's message."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


# Option types: the rules of b3lb/validation.py, so argparse names the option in the message.
TENANT = _typed(V.parse_tenant_slug, "tenant slug")
NODE_SLUG = _typed(V.NODE_SLUG.parse, "node slug")
NAME = _typed(V.NAME.parse, "name")
HOST = _typed(V.HOST.parse, "host name")
NODE_SECRET = _typed(V.NODE_SECRET.parse, "secret")
BBB_ENDPOINT = _typed(V.BBB_ENDPOINT.parse, "path")
LOAD_ENDPOINT = _typed(V.LOAD_ENDPOINT.parse, "path")
LIMIT = _typed(V.LIMIT.parse, "number")
ROW_ID = _typed(V.ROW_ID.parse, "number")
PIXELS = _typed(V.PIXELS.parse, "number")
FACTOR = _typed(V.FACTOR.parse, "factor")
CPU_ITERATIONS = _typed(V.CPU_ITERATIONS.parse, "number")
CPU_MAXIMUM = _typed(V.CPU_MAXIMUM.parse, "number")
PORT = _typed(V.PORT.parse, "port")
SHA = _typed(V.SHA.parse, "algorithm")
PROTOCOL = _typed(V.PROTOCOL.parse, "protocol")
SUB_IDS = _typed(V.parse_sub_ids, "sub-id")
SECRET_LABEL = _typed(V.parse_secret_label, "secret")
PARAMETER_NAME = _typed(V.PARAMETER_NAME.parse, "parameter name")
PARAMETER_VALUE = _typed(V.PARAMETER_VALUE.parse, "value")
MEETING_ID = _typed(V.MEETING_ID.parse, "meeting ID")
RECORD_SET = _typed(admin_recording.parse_set_id, "record set ID")
SET_LIMIT = _typed(admin_recording.LIST_LIMIT.parse, "number")
BOOL = _typed(_parse_bool, "boolean")
WORKERS = _typed(parse_workers, "number")
HOLD_DAYS = _typed(V.HOLD_DAYS.parse, "number")
HOLD_HELP = (f"days recordings are kept, 0..{V.MAX_HOLD_DAYS}; the secret's and the tenant's together: the larger "
             "if either is 0, else the smaller (0 and 0: deleted at the next housekeeping run)")


# Running commands --------------------------------------------------------------------------


async def _ensure_schema(conn: asyncpg.Connection, embedded: bool) -> None:
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
            await _ensure_schema(conn, embedded=db.embedded is not None)
            async with conn.transaction():
                result = await args.run(conn, args, config)
                await cli_access.audit_command(conn, args)  # every write in the audit log, as cli:<user>
            then = getattr(args, "then", None)  # work that must follow the commit (recording delete)
            return result if then is None else await then(conn, args, config, result)
    finally:
        await db.close()


def run_admin(config: Config, args: argparse.Namespace) -> int:
    result = asyncio.run(_admin_command(config, args))
    args.show(result, args.json)
    return 0


async def _migrate(config: Config, status_only: bool) -> list[dict[str, Any]]:
    db = Database(config)
    try:
        pool = await db.open(min_size=1, max_size=2)
        async with pool.acquire() as conn:
            if status_only:
                return [
                    {
                        "file": s.name,
                        "applied_at": s.applied_at,
                        "state": ("MODIFIED" if s.modified else "applied") if s.applied_at else "pending",
                    }
                    for s in await migrations.status(conn)
                ]
            return [{"file": m.name, "state": "applied"} for m in await migrations.migrate(conn)]
    finally:
        await db.close()


def run_migrate(config: Config, args: argparse.Namespace) -> int:
    rows = asyncio.run(_migrate(config, args.status))
    if args.json:
        print_json(rows)
    elif args.status:
        print_table(rows)
    elif not rows:
        print("nothing to do")
    else:
        for row in rows:
            print(f"applied {row['file']}")
    return 0


def run_db_url(config: Config, args: argparse.Namespace) -> int:
    """Print the database URL; the embedded server is started and left running for psql."""
    url = config.database.url
    if not url:
        data_dir = embedded_data_dir(config)
        try:
            import pgserver

            data_dir.mkdir(parents=True, exist_ok=True)
            url = pgserver.get_server(data_dir, cleanup_mode=None).get_uri()
        except Exception as exc:  # noqa: BLE001 - pgserver raises plain exceptions with pg_ctl output
            raise DatabaseUnavailable(f"cannot start embedded PostgreSQL in {data_dir}: {exc}") from None
        print(
            f"note: embedded PostgreSQL ({data_dir}) is running; it stops when the next b3lb "
            "process that uses it exits",
            file=sys.stderr,
        )
    print_json({"url": url}) if args.json else print(url)
    return 0


def run_config_example(config: Config, args: argparse.Namespace) -> int:
    """Print the commented default configuration shipped with b3lb."""
    sys.stdout.write(resources.example_config())
    return 0


def run_serve(config: Config, args: argparse.Namespace) -> int:
    from b3lb.server import serve

    return serve(config, config_path=args.config, workers=args.workers)


# The command line --------------------------------------------------------------------------

COMMON = Parser(add_help=False)
COMMON.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
COMMON.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="configuration file")


def _group(sub: Any, name: str, help_text: str) -> Any:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    commands = parser.add_subparsers(title="commands", dest=f"{name}_command", metavar="COMMAND")
    commands.required = True
    return commands


def _leaf(sub: Any, name: str, help_text: str, run: Runner, show: Shower = show_rows) -> Parser:
    parser: Parser = sub.add_parser(name, help=help_text, description=help_text, parents=[COMMON])
    parser.set_defaults(handler=run_admin, run=run, show=show)
    return parser


def _cluster_options(parser: Parser) -> None:
    factors = f"0..{int(V.MAX_FACTOR)}"
    parser.add_argument("--a-factor", type=FACTOR, metavar="F", help=f"load per attendee, {factors} (default 1.0)")
    parser.add_argument("--m-factor", type=FACTOR, metavar="F", help=f"load per meeting, {factors} (default 10.0)")
    terms = f"CPU polynomial terms, 0..{V.MAX_CPU_ITERATIONS} (default 6; 0: no CPU term)"
    parser.add_argument("--cpu-iterations", type=CPU_ITERATIONS, metavar="N", help=terms)
    full = f"load of a full CPU, 0..{V.MAX_CPU_MAXIMUM} (default 5000)"
    parser.add_argument("--cpu-maximum", type=CPU_MAXIMUM, metavar="N", help=full)
    parser.add_argument("--sha", type=SHA, help="checksum algorithm towards nodes: SHA256, SHA384 or SHA512")


def _cluster_settings(args: argparse.Namespace) -> ClusterSettings:
    return ClusterSettings(args.a_factor, args.m_factor, args.cpu_iterations, args.cpu_maximum, args.sha)


def _add_cluster(sub: Any) -> None:
    commands = _group(sub, "cluster", "clusters of nodes and their load formula")
    p = _leaf(commands, "add", "add a cluster", lambda c, a, _: admin.cluster_add(c, a.name, _cluster_settings(a)))
    p.add_argument("name", type=NAME)
    _cluster_options(p)
    p = _leaf(commands, "set", "change a cluster", lambda c, a, _: admin.cluster_set(c, a.name, _cluster_settings(a)))
    p.add_argument("name", type=NAME)
    _cluster_options(p)
    _leaf(commands, "list", "list clusters", lambda c, a, _: admin.cluster_list(c))
    p = _leaf(commands, "remove", "remove a cluster without nodes", lambda c, a, _: admin.cluster_remove(c, a.name))
    p.add_argument("name", type=NAME)
    cli_lifecycle.add_cluster_commands(commands)  # maintenance NAME on|off


def _add_cluster_group(sub: Any) -> None:
    commands = _group(sub, "clustergroup", "cluster groups: the clusters a tenant's meetings may use")
    p = _leaf(commands, "add", "add a cluster group", lambda c, a, _: admin.cluster_group_add(c, a.name))
    p.add_argument("name", type=NAME)
    _leaf(commands, "list", "list cluster groups with their clusters", lambda c, a, _: admin.cluster_group_list(c))
    for verb, func in (("link", admin.cluster_group_link), ("unlink", admin.cluster_group_unlink)):
        p = _leaf(commands, verb, f"{verb} a cluster to/from a group", lambda c, a, _, f=func: f(c, a.group, a.cluster))
        p.add_argument("group", type=NAME)
        p.add_argument("cluster", type=NAME)
    p = _leaf(
        commands,
        "remove",
        "remove a cluster group no tenant uses",
        lambda c, a, _: admin.cluster_group_remove(c, a.name),
    )
    p.add_argument("name", type=NAME)


def _node_options(parser: Parser, add: bool) -> None:
    parser.add_argument("--domain", type=HOST, required=add, help="DNS name or IP address of the node (no port)")
    parser.add_argument("--secret", type=NODE_SECRET, required=add, help="the node's BBB API secret")
    parser.add_argument("--protocol", type=PROTOCOL, help="http or https (default: node_defaults.protocol)")
    parser.add_argument("--port", type=PORT, help="port, 1..65535 (default: node_defaults.port)")
    parser.add_argument("--bbb-endpoint", type=BBB_ENDPOINT, metavar="PATH", help="BBB API path")
    parser.add_argument("--load-endpoint", type=LOAD_ENDPOINT, metavar="PATH", help="load report path")
    if add:
        parser.add_argument("--maintenance", action="store_true", help="start in maintenance mode")
    else:
        parser.add_argument("--maintenance", action=argparse.BooleanOptionalAction, help="maintenance mode")


def _node_settings(args: argparse.Namespace, config: Config | None = None) -> NodeSettings:
    d = config.node_defaults if config is not None else None
    return NodeSettings(
        domain=args.domain,
        secret=args.secret,
        protocol=args.protocol or (d.protocol if d else None),
        port=args.port or (d.port if d else None),
        bbb_endpoint=args.bbb_endpoint if args.bbb_endpoint is not None or not d else d.bbb_endpoint,
        load_endpoint=args.load_endpoint if args.load_endpoint is not None or not d else d.load_endpoint,
        maintenance=args.maintenance,
    )


def _add_node(sub: Any) -> None:
    commands = _group(sub, "node", "BigBlueButton nodes (NODE: SLUG if unique, else CLUSTER/SLUG)")
    p = _leaf(
        commands, "add", "add a node", lambda c, a, cfg: admin.node_add(c, a.cluster, a.slug, _node_settings(a, cfg))
    )
    p.add_argument("--cluster", type=NAME, required=True)
    p.add_argument("--slug", type=NODE_SLUG, required=True)
    _node_options(p, add=True)
    p = _leaf(commands, "list", "list nodes with state and load", lambda c, a, _: admin.node_list(c, a.cluster))
    p.add_argument("--cluster", type=NAME)
    p = _leaf(commands, "set", "change a node", lambda c, a, _: admin.node_set(c, a.node, _node_settings(a)))
    p.add_argument("node")
    _node_options(p, add=False)
    p = _leaf(
        commands,
        "remove",
        "remove a node (refused while it hosts meetings, unless --force)",
        lambda c, a, _: admin.node_remove(c, a.node, a.force),
    )
    p.add_argument("node")
    p.add_argument("--force", action="store_true", help="also forget the node's meetings")
    p = _leaf(
        commands,
        "maintenance",
        "switch maintenance mode on or off",
        lambda c, a, _: admin.node_maintenance(c, a.node, a.state == "on"),
    )
    p.add_argument("node")
    p.add_argument("state", choices=("on", "off"))
    cli_lifecycle.add_node_commands(commands)  # drain, panic


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
    commands = _group(sub, "tenant", "tenants (SLUG: 2-10 letters, stored upper-case)")
    p = _leaf(
        commands,
        "add",
        "add a tenant (then create its secret: b3lb secret add SLUG --sub-id 0)",
        lambda c, a, _: admin_tenant.tenant_add(c, a.slug, _tenant_settings(a)),
    )
    p.add_argument("slug", type=TENANT)
    _tenant_options(p, add=True)
    _leaf(commands, "list", "list tenants", lambda c, a, _: admin_tenant.tenant_list(c))
    p = _leaf(
        commands, "set", "change a tenant", lambda c, a, _: admin_tenant.tenant_set(c, a.slug, _tenant_settings(a))
    )
    p.add_argument("slug", type=TENANT)
    _tenant_options(p, add=False)
    p = _leaf(
        commands,
        "show",
        "show a tenant with its stats token, secrets and API endpoints",
        lambda c, a, cfg: admin_tenant.tenant_show(c, a.slug, cfg.server.public_scheme, cfg.server.api_base_domain),
        show=show_tenant,
    )
    p.add_argument("slug", type=TENANT)
    p = _leaf(
        commands,
        "remove",
        "remove a tenant with its secrets, rules and assets",
        lambda c, a, _: admin_tenant.tenant_remove(c, a.slug, a.force),
    )
    p.add_argument("slug", type=TENANT)
    p.add_argument("--force", action="store_true", help="even while it has meetings")


def _add_secret(sub: Any) -> None:
    commands = _group(sub, "secret", "tenant API secrets (SECRET: TENANT for sub-id 0, else TENANT-NNN)")
    p = _leaf(
        commands,
        "add",
        "create secrets with random values; nothing is created if any sub-id already exists",
        lambda c, a, _: admin_tenant.secret_add(
            c, a.tenant, a.sub_id,
            SecretSettings(a.attendee_limit, a.meeting_limit, a.record_by_default, a.hold_time_days),
        ),
    )
    p.add_argument("tenant", type=TENANT)
    p.add_argument("--sub-id", type=SUB_IDS, default=range(1), metavar="N|N-M", help="0..999 (default 0)")
    p.add_argument("--attendee-limit", type=LIMIT, metavar="N", help="override the tenant's limit")
    p.add_argument("--meeting-limit", type=LIMIT, metavar="N", help="override the tenant's limit")
    p.add_argument("--record-by-default", type=BOOL, metavar="true|false", help="override the tenant's choice")
    p.add_argument("--hold-time-days", type=HOLD_DAYS, metavar="N", help=HOLD_HELP + " (default 14)")
    p = _leaf(commands, "list", "list secrets", lambda c, a, _: admin_tenant.secret_list(c, a.tenant))
    p.add_argument("--tenant", type=TENANT)
    p = _leaf(
        commands,
        "rotate",
        "new secret value; the old one stays valid as secret2 (prints the new secret)",
        lambda c, a, _: admin_tenant.secret_rotate(c, *a.secret),
        show=show_new_secret,
    )
    p.add_argument("secret", type=SECRET_LABEL)
    p = _leaf(
        commands, "remove", "remove a secret", lambda c, a, _: admin_tenant.secret_remove(c, *a.secret, force=a.force)
    )
    p.add_argument("secret", type=SECRET_LABEL)
    p.add_argument("--force", action="store_true", help="even while it has meetings")


def _parameter_add(conn: asyncpg.Connection, args: argparse.Namespace, config: Config) -> Awaitable[Any]:
    rule = ParameterRule(args.create_join, args.mode, args.name, args.value)
    if args.tenant is not None:
        return admin_tenant.parameter_add(conn, args.tenant, None, rule)
    return admin_tenant.parameter_add(conn, args.secret[0], args.secret[1], rule)


def _add_parameter(sub: Any) -> None:
    commands = _group(sub, "parameter", "parameter rules for create/join calls")
    p = _leaf(commands, "add", "add a rule (VALUE required for SET and OVERRIDE)", _parameter_add)
    owner = p.add_mutually_exclusive_group(required=True)
    owner.add_argument("--tenant", type=TENANT, help="rule for all the tenant's secrets")
    owner.add_argument("--secret", type=SECRET_LABEL, metavar="TENANT-NNN", help="rule for one secret")
    p.add_argument("--for", dest="create_join", type=str.upper, choices=admin_tenant.CREATE_JOIN, required=True)
    p.add_argument("--mode", type=str.upper, choices=admin_tenant.MODES, required=True)
    p.add_argument("name", type=PARAMETER_NAME, help="BBB parameter name")
    p.add_argument("value", type=PARAMETER_VALUE, nargs="?", help=f"value (up to {V.MAX_PARAMETER} characters)")
    p = _leaf(commands, "list", "list rules", lambda c, a, _: admin_tenant.parameter_list(c, a.tenant))
    p.add_argument("--tenant", type=TENANT)
    p = _leaf(commands, "remove", "remove a rule by id", lambda c, a, _: admin_tenant.parameter_remove(c, a.id))
    p.add_argument("id", type=ROW_ID)


def _add_asset(sub: Any) -> None:
    commands = _group(sub, "asset", "tenant logo, default slide and CSS")
    p = _leaf(
        commands,
        "set",
        "store a file (at most 16 MiB) as the tenant's logo, slide or css",
        lambda c, a, _: admin_tenant.asset_set(c, a.tenant, a.kind, Path(a.file)),
    )
    p.add_argument("tenant", type=TENANT)
    p.add_argument("kind", choices=admin_tenant.ASSET_KINDS)
    p.add_argument("file")
    p = _leaf(commands, "clear", "remove an asset", lambda c, a, _: admin_tenant.asset_clear(c, a.tenant, a.kind))
    p.add_argument("tenant", type=TENANT)
    p.add_argument("kind", choices=admin_tenant.ASSET_KINDS)
    _leaf(commands, "list", "list stored assets", lambda c, a, _: admin_tenant.asset_list(c))


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
    commands = _group(sub, "recordprofile", "video rendering profiles for recordings")
    p = _leaf(
        commands,
        "add",
        "add a recording profile",
        lambda c, a, _: admin_tenant.record_profile_add(c, a.name, _profile_settings(a)),
    )
    p.add_argument("name", type=NAME)
    for option, default in (("width", 1920), ("height", 1080), ("webcam-width", 320), ("webcam-height", 180)):
        p.add_argument(f"--{option}", type=PIXELS, metavar="N", help=f"pixels, 1..{V.MAX_PIXELS} (default {default})")
    p.add_argument("--webcam-stretch", action="store_true", default=None, help="stretch webcams")
    p.add_argument("--webcam-crop", action="store_true", default=None, help="crop webcams")
    p.add_argument("--format", type=str.upper, choices=admin_tenant.RECORD_FORMATS, help="default MP4")
    p.add_argument("--no-annotate", action="store_true", help="leave out whiteboard annotations")
    p.add_argument("--no-backdrop", action="store_true", help="leave out the backdrop")
    cli_render.add_profile_links(commands)  # list (with links), link, unlink
    p = _leaf(
        commands, "remove", "remove an unused profile", lambda c, a, _: admin_tenant.record_profile_remove(c, a.name)
    )
    p.add_argument("name", type=NAME)


def _add_meeting(sub: Any) -> None:
    commands = _group(sub, "meeting", "running meetings and the nodes hosting them")
    p = _leaf(commands, "list", "list meetings", lambda c, a, _: admin_meeting.meeting_list(c, a.tenant))
    p.add_argument("--tenant", type=TENANT)
    p = _leaf(commands, "where", "show the node hosting a meeting", lambda c, a, _: admin_meeting.meeting_where(
        c, a.meeting_id))
    p.add_argument("meeting_id", type=MEETING_ID, metavar="MEETING_ID")


def _add_recording(sub: Any) -> None:
    commands = _group(sub, "recording", "record sets (ID: the set's UUID): uploads, videos, render jobs")
    p = _leaf(commands, "list", "list record sets, newest first", lambda c, a, _: admin_recording.recording_list(
        c, a.tenant, a.status, a.limit), show=admin_recording.show_recordings)
    p.add_argument("--tenant", type=TENANT)
    p.add_argument("--status", type=str.upper, choices=admin_recording.STATUSES)
    p.add_argument("--limit", type=SET_LIMIT, default=admin_recording.DEFAULT_LIMIT, metavar="N",
                   help=f"at most N sets, 1..{admin_recording.LIST_LIMIT.high} (default %(default)s)")
    p = _leaf(commands, "show", "show a set with its records, render job and undelivered callbacks",
              lambda c, a, cfg: admin_recording.recording_show(c, a.id, cfg.public_base_url),
              show=admin_recording.show_recording)
    p.add_argument("id", type=RECORD_SET, metavar="ID")
    p = _leaf(commands, "delete", "delete a set: marked DELETING, then its files, then its rows",
              lambda c, a, _: admin_recording.recording_mark_deleting(c, a.id))
    p.set_defaults(then=admin_recording.recording_purge)
    p.add_argument("id", type=RECORD_SET, metavar="ID")
    p = _leaf(commands, "rerender", "queue the set's render job again (sets with an uploaded archive)",
              lambda c, a, _: admin_recording.recording_rerender(c, a.id))
    p.add_argument("id", type=RECORD_SET, metavar="ID")


def build_parser() -> Parser:
    parser = Parser(prog="b3lb", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", default=None, help="configuration file (default: conf/b3lb.conf)")
    parser.add_argument("--json", action="store_true", default=False, help="print JSON instead of a table")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("serve", help="run the load balancer", description="run the load balancer", parents=[COMMON])
    p.add_argument("--workers", type=WORKERS, metavar="N",
                   help=f"processes serving the port, 1..{MAX_WORKERS}, e.g. one per core (default: server.workers); "
                   "more than 1 adds a supervisor that starts, restarts and stops them")
    p.set_defaults(handler=run_serve)
    p = sub.add_parser(
        "migrate",
        help="apply pending schema migrations",
        description="apply pending schema migrations",
        parents=[COMMON],
    )
    p.add_argument("--status", action="store_true", help="only list migration files and when they were applied")
    p.set_defaults(handler=run_migrate)
    p = sub.add_parser(
        "db-url",
        help='print the database URL (e.g. psql "$(b3lb db-url)")',
        description='print the database URL, e.g. psql "$(b3lb db-url)". Without database.url the embedded '
        "PostgreSQL is started and left running until the next b3lb process that uses it exits.",
        parents=[COMMON],
    )
    p.set_defaults(handler=run_db_url, needs_sql=False)
    text = "print the shipped conf/b3lb.conf: every key with its default and a comment"
    p = sub.add_parser("config-example", help=text, description=text, parents=[COMMON])
    p.set_defaults(handler=run_config_example, needs_sql=False)
    for add in (
        _add_cluster,
        _add_cluster_group,
        _add_node,
        _add_tenant,
        _add_secret,
        _add_parameter,
        _add_asset,
        _add_record_profile,
        _add_meeting,
        _add_recording,
        cli_render.add_render_command,
        cli_access.add_access_commands,  # token add|list|expire|revoke, secret set
    ):
        add(sub)
    return parser


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    # pgserver (embedded database) warns through platformdirs when XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"config: {exc}", 2)
    try:
        if getattr(args, "needs_sql", True):
            resources.require_sql_files()  # an incomplete install stops here, not on its first query
        return int(args.handler(config, args))
    except resources.MissingFiles as exc:
        return _fail(str(exc), 1)
    except AdminError as exc:
        return _fail(str(exc), 1)
    except ValueError as exc:
        return _fail(str(exc), 2)
    except (DatabaseUnavailable, migrations.MigrationError) as exc:
        return _fail(str(exc), 1)
    except asyncpg.PostgresError as exc:
        return _fail(common.describe_db_error(exc), 1)
    except (TimeoutError, OSError, asyncpg.InterfaceError) as exc:
        return _fail(f"database: {exc or type(exc).__name__}", 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # never a traceback for operators; B3LB_DEBUG=1 shows it
        if os.environ.get("B3LB_DEBUG"):
            raise
        return _fail(f"internal error: {type(exc).__name__}: {exc}", 1)


if __name__ == "__main__":
    sys.exit(main())
