"""`b3lb serve`: one uvloop event loop running the HTTP server and the background tasks.

With `server.workers` > 1, `serve` hands over to the supervisor of b3lb/workers.py, and each of
its worker processes runs `run_server` here with a WorkerRole: the port bound with SO_REUSEPORT,
migrations left to the supervisor, readiness reported on a pipe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

import uvloop
from tornado.netutil import bind_sockets

from b3lb import looplag, migrate
from b3lb.app import make_app
from b3lb.config import Config
from b3lb.db import Database, DatabaseUnavailable
from b3lb.events import MeetingEvents
from b3lb.httplimits import make_http_server
from b3lb.leader import Leadership
from b3lb.logs import setup_logging
from b3lb.memory import settle_periodically, tune_garbage_collector
from b3lb.poller import Poller
from b3lb.recordings import tasks as recording_tasks
from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.server")


@dataclass(frozen=True)
class WorkerRole:
    """This process is worker `index` of a `b3lb serve --workers N` supervisor."""

    index: int
    ready_fd: int | None = None  # written to once the port is served, then closed
    supervisor: int = 0  # its pid

    def announce_ready(self) -> None:
        if self.ready_fd is not None:
            try:
                os.write(self.ready_fd, b"r")
                os.close(self.ready_fd)
            except OSError:  # the supervisor is gone; PR_SET_PDEATHSIG stops us soon
                pass


class WorkerTag(logging.Filter):
    """Adds the worker index and pid to every log line of a worker (or the supervisor)."""

    def __init__(self, worker: int | str) -> None:
        super().__init__()
        self.worker, self.pid = worker, os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker, record.pid = self.worker, self.pid
        return True


_EARLY_STOP: list[int] = []  # SIGTERM/SIGINT that reached a worker before it served


def _note_early_stop(signum: int, frame: object) -> None:
    _EARLY_STOP.append(signum)


def tag_logs(worker: int | str) -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(WorkerTag(worker))


def _render_worker_starter() -> Callable[[Runtime], object]:
    from b3lb.render.worker import start_embedded

    return start_embedded


async def _start_runtime(config: Config, db: Database, worker: WorkerRole | None) -> Runtime:
    """Migrations (unless a supervisor applied them), the in-memory tables and the background tasks."""
    assert db.pool is not None
    if worker is None:
        async with db.pool.acquire() as conn:
            applied = await migrate.migrate(conn)
        for item in applied:
            log.info("applied migration %s", item.name)
    # Imported before anything runs on the loop: the render worker's modules take ~150 ms to import,
    # which the lag probe (and every request of that moment) would otherwise see.
    start_embedded = _render_worker_starter() if config.render.embedded else None
    runtime = Runtime(config, db.pool)
    await runtime.start()
    runtime.poller = Poller(runtime)
    runtime.add_task("poller", Leadership(runtime, runtime.poller).run())  # one poller per database
    runtime.add_task("event loop lag probe", looplag.probe())
    recording_tasks.start(runtime)  # ready callbacks from the outbox; housekeeping while leading
    if start_embedded is not None:  # one render worker in this process (b3lb/render/worker.py)
        start_embedded(runtime)
    if config.redis.url:
        runtime.events = MeetingEvents(runtime, config.redis.url)
        runtime.add_task("meeting events", runtime.events.listen())
    return runtime


async def run_server(config: Config, *, ready: asyncio.Event | None = None, worker: WorkerRole | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, finish in-flight requests, clean up."""
    db = Database(config)
    await db.open(serving=True)
    try:
        runtime = await _start_runtime(config, db, worker)
        app = make_app(runtime)
        if app.metrics_cache is not None:  # /b3lb/metrics re-rendered after each poll cycle
            if worker is not None:  # one text for all workers: b3lb/metrics_shared.py
                app.metrics_cache.share_between_workers(worker.index, worker.supervisor)
            runtime.add_task("metrics render-ahead", app.metrics_cache.run())
        # Size limits and timeouts answered in HTTP (413/414/431), stalled clients dropped: httplimits.py.
        server = make_http_server(app, config.server)
        if worker is None:
            server.listen(config.server.port, address=config.server.listen_address)
        else:  # every worker binds the port itself; the kernel spreads new connections over them
            server.add_sockets(bind_sockets(config.server.port, config.server.listen_address, reuse_port=True))
        log.info("listening", extra={"address": config.server.listen_address, "port": config.server.port})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if _EARLY_STOP:  # asked to stop while starting: stop as cleanly as from here on
            stop.set()
        tune_garbage_collector()
        runtime.add_task("young-generation settling", settle_periodically())
        if ready is not None:
            ready.set()
        if worker is not None:
            worker.announce_ready()
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


def serve(
    config: Config, *, config_path: str | None = None, workers: int | None = None, worker: WorkerRole | None = None
) -> int:
    """Run the server: in this process, or as the supervisor of `workers` (default: server.workers)
    processes, which load the configuration from `config_path` (else $B3LB_CONFIG or the default)."""
    if workers is not None and workers != config.server.workers:  # `b3lb serve --workers N` wins
        if workers > 1 and config.server.port == 0:
            raise ValueError("config: server.port: cannot be 0 (any free port) with --workers > 1")
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, workers=workers))
    if worker is None and config.server.workers > 1:
        from b3lb.workers import supervise

        return supervise(config, config_path)
    setup_logging(config.server.log_level)
    if worker is not None:
        tag_logs(worker.index)
        # A supervisor stopping while this worker starts must get a clean exit, not a kill.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _note_early_stop)
    try:
        uvloop.run(run_server(config, worker=worker))
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
