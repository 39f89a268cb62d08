"""`b3lb serve`: one uvloop event loop running the HTTP server and the background tasks."""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop

from b3lb import migrate
from b3lb.app import make_app
from b3lb.config import Config
from b3lb.db import Database, DatabaseUnavailable
from b3lb.events import MeetingEvents
from b3lb.httplimits import make_http_server
from b3lb.leader import Leadership
from b3lb.logs import setup_logging
from b3lb.memory import tune_garbage_collector
from b3lb.poller import Poller
from b3lb.recordings import tasks as recording_tasks
from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.server")


async def run_server(config: Config, *, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, finish in-flight requests, clean up."""
    db = Database(config)
    await db.open(serving=True)
    try:
        assert db.pool is not None
        async with db.pool.acquire() as conn:
            applied = await migrate.migrate(conn)
        for item in applied:
            log.info("applied migration %s", item.name)
        runtime = Runtime(config, db.pool)
        await runtime.start()
        runtime.poller = Poller(runtime)
        runtime.add_task("poller", Leadership(runtime, runtime.poller).run())
        recording_tasks.start(runtime)  # ready callbacks from the outbox; housekeeping while leading
        if config.render.embedded:  # one render worker in this process (b3lb/render/worker.py)
            from b3lb.render.worker import start_embedded

            start_embedded(runtime)
        if config.redis.url:
            runtime.events = MeetingEvents(runtime, config.redis.url)
            runtime.add_task("meeting events", runtime.events.listen())
        # Size limits and timeouts answered in HTTP (413/414/431), stalled clients dropped: httplimits.py.
        server = make_http_server(make_app(runtime), config.server)
        server.listen(config.server.port, address=config.server.listen_address)
        log.info("listening", extra={"address": config.server.listen_address, "port": config.server.port})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tune_garbage_collector()
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down")
        server.stop()
        try:
            await asyncio.wait_for(server.close_all_connections(), timeout=config.server.shutdown_grace)
        except TimeoutError:
            log.warning("in-flight requests did not finish within %.0fs", config.server.shutdown_grace)
        await runtime.stop()
    finally:
        await db.close()
        log.info("stopped")


def serve(config: Config) -> int:
    setup_logging(config.server.log_level)
    try:
        uvloop.run(run_server(config))
    except DatabaseUnavailable as exc:
        log.error("cannot start: %s", exc)
        return 1
    except migrate.MigrationError as exc:
        log.error("cannot start: migration failed: %s", exc)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
