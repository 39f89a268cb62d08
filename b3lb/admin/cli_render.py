"""The rendering commands of the `b3lb` console script (hooked into b3lb/admin/cli.py):

- `b3lb render [--concurrency N] [--once] [--name NAME] [--metrics-port PORT]`: a render worker
  in its own process. Any number of them, on any machine that reaches the database and the
  recording storage, share the queue (that is how rendering scales out). SIGTERM/SIGINT stop it;
  its running jobs are given back to the queue. `--once` renders what is due and exits.
- `b3lb recordprofile list|link|unlink`: the profiles with the tenants and secrets linked to them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from typing import Any

from b3lb import validation as V
from b3lb.admin import profiles as admin_render
from b3lb.admin.common import AdminError
from b3lb.config import Config

CONCURRENCY = V.Whole(1, 64)
WORKER_NAME = V.Text(max_length=100, spaces=False)


# b3lb recordprofile list|link|unlink ---------------------------------------------------------


def add_profile_links(commands: Any) -> None:
    """`list` (with links), `link` and `unlink` in the `recordprofile` group."""
    from b3lb.admin.cli_common import NAME, SECRET_LABEL, TENANT, leaf

    leaf(commands, "list", "list recording profiles with the tenants and secrets linked to them",
          lambda c, a, _: admin_render.profile_list(c), show=admin_render.show_profiles)  # fmt: skip
    for verb, func, text in (
        ("link", admin_render.profile_link,
         "render a tenant's or a secret's recordings with this profile (with links, only the linked profiles)"),
        ("unlink", admin_render.profile_unlink, "remove a link made with 'b3lb recordprofile link'"),
    ):  # fmt: skip
        p = leaf(commands, verb, text, lambda c, a, _, f=func: f(c, a.name, a.tenant, a.secret),
                  show=admin_render.show_profiles)  # fmt: skip
        p.add_argument("name", type=NAME, metavar="PROFILE")
        owner = p.add_mutually_exclusive_group(required=True)
        owner.add_argument("--tenant", type=TENANT, help="every secret of the tenant (without links of its own)")
        owner.add_argument("--secret", type=SECRET_LABEL, metavar="TENANT-NNN", help="one secret")


# b3lb render ---------------------------------------------------------------------------------


def add_render_command(sub: Any) -> None:
    from b3lb.admin.cli_common import COMMON, PORT, typed

    text = "run a render worker: render uploaded recordings into one video per recording profile"
    p = sub.add_parser("render", help=text, description=text + ". Several workers, also on other machines "
                       "sharing the database and the recording storage, share the work.", parents=[COMMON])
    p.add_argument("--concurrency", type=typed(CONCURRENCY.parse, "number"), metavar="N",
                   help=f"jobs at once, 1..{CONCURRENCY.high} (default: render.concurrency)")
    p.add_argument("--once", action="store_true", help="render the jobs that are due, then exit")
    p.add_argument("--name", type=typed(WORKER_NAME.parse, "name"),
                   help="this worker's name in 'b3lb recording show' (default: HOST:PID/render)")
    p.add_argument("--metrics-port", type=PORT, metavar="PORT",
                   help="serve this worker's Prometheus metrics on server.listen_address:PORT")
    p.set_defaults(handler=run_render)


def run_render(config: Config, args: argparse.Namespace) -> int:
    import uvloop

    from b3lb.logs import setup_logging

    if args.concurrency is not None:
        config = dataclasses.replace(config, render=dataclasses.replace(config.render, concurrency=args.concurrency))
    setup_logging(config.server.log_level)
    return uvloop.run(_render(config, args))


async def _render(config: Config, args: argparse.Namespace) -> int:
    from b3lb.admin.cli_common import ensure_schema
    from b3lb.db import Database
    from b3lb.recordings.storage import make_storage
    from b3lb.render.worker import RendererUnavailable, RenderWorker, default_name

    db = Database(config)
    try:
        # A claim, and per job a heartbeat and a storing transaction, at the same time.
        pool = await db.open(min_size=1, max_size=2 * config.render.concurrency + 2)
        async with pool.acquire() as conn:
            await ensure_schema(conn, embedded=db.embedded is not None)
        storage = make_storage(config)
        try:
            worker = RenderWorker(pool, storage, config, args.name or default_name())
            try:
                worker.prepare()
            except RendererUnavailable as exc:
                raise AdminError(f"cannot render on this machine: {exc}") from None
            if args.metrics_port:
                from prometheus_client import start_http_server

                start_http_server(args.metrics_port, addr=config.server.listen_address)
            if args.once:
                jobs = await worker.run(until_idle=True)
                print(f"{jobs} render jobs processed", file=sys.stderr)
                return 0
            await _until_stopped(worker.run())
            return 0
        finally:
            await storage.close()
    finally:
        await db.close()


async def _until_stopped(work: Any) -> None:
    """Run `work` until SIGTERM or SIGINT, then cancel it (the worker gives its jobs back)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # the worker ended by itself: only an error does that
    finally:
        stopper.cancel()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
