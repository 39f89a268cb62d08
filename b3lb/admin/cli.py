"""The `b3lb` console script: the server, migrations and every admin command.

The server, migration, fleet (cluster, clustergroup, node), meeting and recording commands are built
here; tenant, secret, parameter, asset and profile commands in b3lb/admin/cli_tenants.py, tokens in
cli_access.py, drain/panic in cli_lifecycle.py, rendering in cli_render.py, and what they share (option
types, group/leaf builders, the runner and its audit row) in cli_common.py. Printing lives in
b3lb/admin/output.py, the rules for every value in b3lb/validation.py, the operations in
b3lb/admin/fleet.py, tenants.py, meetings.py and recordings.py. Each admin command runs in one
transaction, so a failing command writes nothing. Errors are one line
on stderr starting with `error: `; the exit status is 2 for bad usage or configuration and 1
for everything else (an incomplete installation included).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import warnings
from typing import Any

import asyncpg

from b3lb import migrate as migrations
from b3lb import resources
from b3lb import validation as V
from b3lb.admin import cli_access, cli_lifecycle, cli_render, cli_tenants, common
from b3lb.admin import fleet as admin
from b3lb.admin import meetings as admin_meeting
from b3lb.admin import recordings as admin_recording
from b3lb.admin.cli_common import (
    BBB_ENDPOINT,
    COMMON,
    CPU_ITERATIONS,
    CPU_MAXIMUM,
    FACTOR,
    HOST,
    LOAD_ENDPOINT,
    MEETING_ID,
    NAME,
    NODE_SECRET,
    NODE_SLUG,
    PORT,
    PROTOCOL,
    RECORD_SET,
    SET_LIMIT,
    SHA,
    TENANT,
    WORKERS,
    Parser,
    UsageError,
    group,
    leaf,
)
from b3lb.admin.common import AdminError, Row
from b3lb.admin.fleet import ClusterSettings, NodeSettings
from b3lb.admin.output import print_json, print_table
from b3lb.config import MAX_WORKERS, Config, ConfigError, load_config
from b3lb.db import Database, DatabaseUnavailable, embedded_data_dir
from b3lb.recordings.storage import make_storage

DESCRIPTION = """\
b3lb: a BigBlueButton API load balancer.

Database: database.url (or DATABASE_URL); when it is empty, b3lb uses an embedded PostgreSQL in
{server.data_dir}/pgdata. Admin commands apply pending migrations to the embedded database by
themselves; with a configured database.url they refuse to run until 'b3lb migrate' was run.
Global options (--config, --json) may come before or after the command.
"""


# Running commands --------------------------------------------------------------------------


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
    commands = group(sub, "cluster", "clusters of nodes and their load formula")
    p = leaf(commands, "add", "add a cluster", lambda c, a, _: admin.cluster_add(c, a.name, _cluster_settings(a)))
    p.add_argument("name", type=NAME)
    _cluster_options(p)
    p = leaf(commands, "set", "change a cluster", lambda c, a, _: admin.cluster_set(c, a.name, _cluster_settings(a)))
    p.add_argument("name", type=NAME)
    _cluster_options(p)
    leaf(commands, "list", "list clusters", lambda c, a, _: admin.cluster_list(c))
    p = leaf(commands, "remove", "remove a cluster without nodes", lambda c, a, _: admin.cluster_remove(c, a.name))
    p.add_argument("name", type=NAME)
    cli_lifecycle.add_cluster_commands(commands)  # maintenance NAME on|off


def _add_cluster_group(sub: Any) -> None:
    commands = group(sub, "clustergroup", "cluster groups: the clusters a tenant's meetings may use")
    p = leaf(commands, "add", "add a cluster group", lambda c, a, _: admin.cluster_group_add(c, a.name))
    p.add_argument("name", type=NAME)
    leaf(commands, "list", "list cluster groups with their clusters", lambda c, a, _: admin.cluster_group_list(c))
    for verb, func in (("link", admin.cluster_group_link), ("unlink", admin.cluster_group_unlink)):
        p = leaf(commands, verb, f"{verb} a cluster to/from a group", lambda c, a, _, f=func: f(c, a.group, a.cluster))
        p.add_argument("group", type=NAME)
        p.add_argument("cluster", type=NAME)
    p = leaf(
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


def _node_settings(args: argparse.Namespace) -> NodeSettings:
    return NodeSettings(args.domain, args.secret, args.protocol, args.port, args.bbb_endpoint, args.load_endpoint,
                        args.maintenance)


def _add_node(sub: Any) -> None:
    commands = group(sub, "node", "BigBlueButton nodes (NODE: SLUG if unique, else CLUSTER/SLUG)")
    p = leaf(commands, "add", "add a node", lambda c, a, cfg: admin.node_add(
        c, a.cluster, a.slug, admin.with_node_defaults(_node_settings(a), cfg.node_defaults)))
    p.add_argument("--cluster", type=NAME, required=True)
    p.add_argument("--slug", type=NODE_SLUG, required=True)
    _node_options(p, add=True)
    p = leaf(commands, "list", "list nodes with state and load", lambda c, a, _: admin.node_list(c, a.cluster))
    p.add_argument("--cluster", type=NAME)
    p = leaf(commands, "set", "change a node", lambda c, a, _: admin.node_set(c, a.node, _node_settings(a)))
    p.add_argument("node")
    _node_options(p, add=False)
    p = leaf(
        commands,
        "remove",
        "remove a node (refused while it hosts meetings, unless --force)",
        lambda c, a, _: admin.node_remove(c, a.node, a.force),
    )
    p.add_argument("node")
    p.add_argument("--force", action="store_true", help="also forget the node's meetings")
    p = leaf(
        commands,
        "maintenance",
        "switch maintenance mode on or off",
        lambda c, a, _: admin.node_maintenance(c, a.node, a.state == "on"),
    )
    p.add_argument("node")
    p.add_argument("state", choices=("on", "off"))
    cli_lifecycle.add_node_commands(commands)  # drain, panic


def _add_meeting(sub: Any) -> None:
    commands = group(sub, "meeting", "running meetings and the nodes hosting them")
    p = leaf(commands, "list", "list meetings", lambda c, a, _: admin_meeting.meeting_list(c, a.tenant))
    p.add_argument("--tenant", type=TENANT)
    p = leaf(commands, "where", "show the node hosting a meeting", lambda c, a, _: admin_meeting.meeting_where(
        c, a.meeting_id))
    p.add_argument("meeting_id", type=MEETING_ID, metavar="MEETING_ID")


def _add_recording(sub: Any) -> None:
    commands = group(sub, "recording", "record sets (ID: the set's public UUID, as 'list' shows it): uploads, "
                     "videos, render jobs")
    p = leaf(commands, "list", "list record sets, newest first", lambda c, a, _: admin_recording.recording_list(
        c, a.tenant, a.status, a.limit), show=admin_recording.show_recordings)
    p.add_argument("--tenant", type=TENANT)
    p.add_argument("--status", type=str.upper, choices=admin_recording.STATUSES)
    p.add_argument("--limit", type=SET_LIMIT, default=admin_recording.DEFAULT_LIMIT, metavar="N",
                   help=f"at most N sets, 1..{admin_recording.LIST_LIMIT.high} (default %(default)s)")
    p = leaf(commands, "show", "show a set with its records, render job and undelivered callbacks",
              lambda c, a, cfg: admin_recording.recording_show(c, a.id, cfg.public_base_url),
              show=admin_recording.show_recording)
    p.add_argument("id", type=RECORD_SET, metavar="ID")
    p = leaf(commands, "delete", "delete a set: marked DELETING, then its files, then its rows",
              lambda c, a, _: admin_recording.recording_mark_deleting(c, a.id))
    p.set_defaults(then=_recording_purge)
    p.add_argument("id", type=RECORD_SET, metavar="ID")
    p = leaf(commands, "rerender", "queue the set's render job again (sets with an uploaded archive)",
              lambda c, a, _: admin_recording.recording_rerender(c, a.id))
    p.add_argument("id", type=RECORD_SET, metavar="ID")


async def _recording_purge(conn: asyncpg.Connection, args: argparse.Namespace, config: Config,
                           marked: list[Row]) -> list[Row]:  # fmt: skip
    """After `recording delete` committed the DELETING mark: the set's files, then its rows."""
    storage = make_storage(config)
    try:
        return await admin_recording.recording_purge(conn, storage, marked[0])
    finally:
        await storage.close()


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
        cli_tenants.add_tenant_commands,  # tenant, secret, parameter, asset, recordprofile
        _add_meeting,
        _add_recording,
        cli_render.add_render_command,
        cli_access.add_token_commands,  # token add|list|expire|revoke
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
