"""The node lifecycle commands of the `b3lb` console script (hooked into b3lb/admin/cli.py); the
operations themselves are in b3lb/admin/lifecycle.py.

- `b3lb node drain NODE [--wait] [--timeout SECONDS]`: maintenance on (no new meetings, the running ones
  stay); prints the node with its meetings left, or with --wait returns once the poller found the last
  one ended (exit 1 after --timeout, the node staying in maintenance; exit 1 at once when the node is
  in error: the poller cannot see its meetings end, `node panic` drops them).
- `b3lb node panic NODE [--yes]`: maintenance on, then the node's routing rows go, every meeting's
  frontend is told through its end callback, and the node ends the meeting, so frontends re-create
  meetings elsewhere. Asks for confirmation on a terminal; elsewhere --yes is required.
- `b3lb cluster maintenance NAME on|off`: the cluster's own switch; off leaves each node as it is on its
  own (a drained node stays in maintenance).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import asyncpg

from b3lb.admin import audit, lifecycle
from b3lb.admin.common import AdminError, Row
from b3lb.admin.output import show_rows
from b3lb.config import Config

NODE_HELP = "SLUG, or CLUSTER/SLUG when the slug is in several clusters"


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


# b3lb node drain|panic ---------------------------------------------------------------------


def add_node_commands(commands: Any) -> None:
    """`drain` and `panic` in the `node` group."""
    from b3lb.admin.cli_common import leaf, typed

    p = leaf(commands, "drain", "take no new meetings and show (or --wait for) the meetings left",
              lambda c, a, _: lifecycle.node_drain(c, a.node, audit.cli_actor()))
    p.add_argument("node", help=NODE_HELP)
    p.add_argument("--wait", action="store_true", help="return once the last meeting ended (the poller sees it)")
    p.add_argument("--timeout", type=typed(lifecycle.DRAIN_TIMEOUT.parse, "number"), metavar="SECONDS",
                   help=f"with --wait: give up after SECONDS, 1..{lifecycle.DRAIN_TIMEOUT.high} (default: no limit)")
    p.set_defaults(handler=run_drain, then=_drain_wait)
    p = leaf(commands, "panic", "end every meeting of the node now, after telling their frontends (end "
              "callbacks), so that they re-create them on other nodes; the node stays in maintenance",
              lambda c, a, _: lifecycle.node_panic_begin(c, a.node, audit.cli_actor()), show=show_panic)
    p.add_argument("node", help=NODE_HELP)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation (required without a terminal)")
    p.set_defaults(handler=run_panic, then=_panic_finish)


def run_drain(config: Config, args: argparse.Namespace) -> int:
    from b3lb.admin.cli_common import run_admin

    if args.timeout is not None and not args.wait:
        raise ValueError("--timeout: only with --wait")
    return run_admin(config, args)


async def _drain_wait(conn: asyncpg.Connection, args: argparse.Namespace, config: Config, rows: list[Row]) -> Any:
    """After the commit: with --wait, read the meetings left until there are none."""
    if not args.wait:
        return rows

    def progress(row: Row) -> None:
        _note(f"{row['cluster']}/{row['slug']}: {row['meetings_left']} meeting(s) left")

    return await lifecycle.wait_drained(conn, args.node, args.timeout, progress=progress)


def run_panic(config: Config, args: argparse.Namespace) -> int:
    from b3lb.admin.cli_common import run_admin

    if not args.yes:
        _confirm(args.node)
    return run_admin(config, args)


def _confirm(node: str) -> None:
    """Ask on a terminal; anywhere else a panic needs --yes (a script must say so explicitly)."""
    if not sys.stdin.isatty():
        raise ValueError(f"--yes: node panic ends every meeting on {node[:60]!r}; confirm with --yes")
    try:
        answer = input(f"End every meeting on node {node[:60]!r} (frontends are told first)? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise AdminError("panic cancelled: nothing was changed")


async def _panic_finish(
    conn: asyncpg.Connection, args: argparse.Namespace, config: Config, target: lifecycle.PanicTarget
) -> list[Row]:
    """After the maintenance commit (this connection holds the node's panic lock): the rows' removal,
    callbacks and ends (lifecycle.node_panic_finish). Waits one api.cache_refresh_interval before the
    removal and one after it, so that every serving process has seen the maintenance, then the removal."""
    from b3lb.nodeclient import NodeClient  # aiohttp: loaded for a panic only

    client = NodeClient(config.api, config.callbacks)
    try:
        return await lifecycle.node_panic_finish(conn, target, client, audit.cli_actor(),
                                                 settle=config.api.cache_refresh_interval, notify=_note)
    finally:
        await client.aclose()


def show_panic(rows: list[Row], as_json: bool) -> None:
    """One row per meeting; what failed is repeated as one warning line on stderr."""
    show_rows(rows, as_json)
    callbacks = sum(row["callback"] not in ("none",) and not row["callback"].startswith("sent") for row in rows)
    ends = sum(row["end"] not in ("ended", "not running") for row in rows)
    if callbacks or ends:
        print(f"warning: {callbacks} end callback(s) not delivered, {ends} 'end' call(s) failed; their routing "
              "rows were dropped all the same", file=sys.stderr)


# b3lb cluster maintenance ------------------------------------------------------------------


def add_cluster_commands(commands: Any) -> None:
    """`maintenance` in the `cluster` group."""
    from b3lb.admin.cli_common import NAME, leaf

    p = leaf(commands, "maintenance", "switch the cluster's own maintenance on or off (no new meetings on any "
              "of its nodes; off leaves each node in or out of maintenance as it is on its own)",
              lambda c, a, _: lifecycle.cluster_maintenance(c, a.name, a.state == "on", audit.cli_actor()))
    p.add_argument("name", type=NAME)
    p.add_argument("state", choices=("on", "off"))
