"""`b3lb serve --workers N`: a supervisor process and N worker processes sharing the port.

The supervisor has no event loop and serves nothing. It starts the embedded PostgreSQL when no
database.url is configured, applies the migrations once, then starts the workers: each one is
`python -m b3lb.workers`, a fresh interpreter that loads the same configuration (file and
environment, plus DATABASE_URL of the database the supervisor chose) and runs the normal server
(b3lb/server.py), binding the port with SO_REUSEPORT. Fresh interpreters rather than fork: nothing
of the supervisor (embedded PostgreSQL handle, imported state, signal set-up) leaks into a worker,
and a restarted worker is exactly like the first one.

Workers share state as separate b3lb instances do, through PostgreSQL (and Redis when
configured): one of them polls (the leader lock), and only worker 0 runs the embedded render
worker. The supervisor forwards SIGTERM/SIGINT, waits for the workers (server.shutdown_grace plus
the time to close), restarts a worker that died (with a back-off) and gives up, exiting 1, when
workers keep dying before they serve. A worker dies with its supervisor (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import asyncpg

from b3lb import migrate
from b3lb.config import Config, ConfigError, load_config
from b3lb.db import DatabaseUnavailable, EmbeddedPostgres, embedded_data_dir
from b3lb.logs import setup_logging
from b3lb.metrics_shared import shared_path
from b3lb.server import WorkerRole, serve, tag_logs

log = logging.getLogger("b3lb.workers")

WORKER_ENV = "B3LB_WORKER"  # "INDEX:READY_FD:SUPERVISOR_PID", set by the supervisor for its workers
FIRST_BACKOFF = 0.5  # seconds before a dead worker is started again, doubled per death in a row
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0  # seconds a worker must have run for its next death to start the back-off over
START_FAILURES = 5  # deaths before serving, in a row, after which the supervisor gives up
STOP_MARGIN = 15.0  # seconds beyond server.shutdown_grace a worker gets to close down before SIGKILL
TICK = 1.0  # seconds the supervisor sleeps at most (it wakes on signals and worker pipes at once)


@dataclass
class Slot:
    """One worker position: the process currently filling it and its restart history."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None  # read end of the worker's readiness pipe
    ready: bool = False
    started: float = 0.0
    start_failures: int = 0
    backoff: float | None = None  # seconds before the next start after a death
    restart_at: float | None = None
    exit_codes: list[int] = field(default_factory=list)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    def __init__(self, config: Config, database_url: str, config_path: str | None) -> None:
        self.config = config
        self.env = dict(os.environ, DATABASE_URL=database_url, B3LB_SERVER_WORKERS="1")
        if config_path:
            self.env["B3LB_CONFIG"] = config_path
        self.command = [sys.executable, "-m", "b3lb.workers"]  # a worker: worker_main() below
        self.first_backoff = FIRST_BACKOFF
        self.slots = [Slot(i) for i in range(config.server.workers)]
        self.stopping: int | None = None  # the signal that asked us to stop
        self.gave_up = False
        self.stop_codes: list[int] = []  # exit codes of the workers that ended once stopping began
        self._wake_r, self._wake_w = os.pipe()
        self._announced = False

    # -- starting and watching -------------------------------------------------------------

    def _start(self, slot: Slot) -> None:
        read_fd, write_fd = os.pipe()
        env = dict(self.env)
        env[WORKER_ENV] = f"{slot.index}:{write_fd}:{os.getpid()}"
        if slot.index != 0:  # one embedded render worker is enough (render.embedded)
            env["B3LB_RENDER_EMBEDDED"] = "false"
        try:
            slot.proc = subprocess.Popen(self.command, env=env, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
        slot.ready_fd, slot.ready, slot.started, slot.restart_at = read_fd, False, time.monotonic(), None
        log.info("worker %d started (pid %d)", slot.index, slot.proc.pid,
                 extra={"worker_index": slot.index, "worker_pid": slot.proc.pid})

    def _read_ready(self, fd: int) -> None:
        slot = next(s for s in self.slots if s.ready_fd == fd)
        try:
            data = os.read(fd, 16)
        except OSError:
            data = b""
        os.close(fd)
        slot.ready_fd = None
        if data and slot.proc is not None:  # else EOF: the worker died before it served
            slot.ready = True
            slot.start_failures = 0
            log.info("worker %d serving (pid %d)", slot.index, slot.proc.pid)
            if not self._announced and all(s.ready for s in self.slots):
                self._announced = True
                log.info("all %d workers serving", len(self.slots),
                         extra={"pids": [s.proc.pid for s in self.slots if s.proc is not None]})

    def _reap(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is None or slot.proc.poll() is None:
                continue
            code, pid = slot.proc.returncode, slot.proc.pid
            if slot.ready_fd is not None:  # it may have served (and said so) before it died
                self._read_ready(slot.ready_fd)
            slot.proc = None
            slot.exit_codes.append(code)
            if self.stopping is not None:
                self.stop_codes.append(code)
                continue
            if not slot.ready:
                slot.start_failures += 1
            if slot.backoff is None or slot.ready and now - slot.started >= STABLE_AFTER:
                slot.backoff = self.first_backoff  # the first death, or one after a good long run
            if slot.start_failures >= START_FAILURES:
                log.error("worker %d keeps dying before it serves (%s, %d times in a row): giving up",
                          slot.index, describe_exit(code), slot.start_failures)
                self.gave_up = True
                self.stopping = signal.SIGTERM
                continue
            log.warning("worker %d (pid %d) died (%s); starting it again in %.1fs", slot.index, pid,
                        describe_exit(code), slot.backoff)
            slot.restart_at = now + slot.backoff
            slot.backoff = min(slot.backoff * 2, MAX_BACKOFF)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot)

    def _wait(self) -> None:
        """Sleep until a signal, a worker's readiness or exit, or the next restart is due."""
        now = time.monotonic()
        due = [s.restart_at - now for s in self.slots if s.proc is None and s.restart_at is not None]
        timeout = max(0.0, min([TICK, *due]))
        fds = [self._wake_r, *(s.ready_fd for s in self.slots if s.ready_fd is not None)]
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return
        for fd in readable:
            if fd == self._wake_r:
                os.read(fd, 512)  # signal numbers: their handlers already ran
            else:
                self._read_ready(fd)

    # -- signals and stopping --------------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT) and self.stopping is None:
            self.stopping = signum

    def _install_signals(self) -> None:
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):  # SIGCHLD: wake when a worker exits
            signal.signal(sig, self._on_signal)

    def _stop_all(self) -> None:
        signum = self.stopping or signal.SIGTERM
        log.info("stopping %d workers (%s)", sum(s.proc is not None for s in self.slots), signal.Signals(signum).name)
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signum)
        deadline = time.monotonic() + self.config.server.shutdown_grace + STOP_MARGIN
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                slot.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not stop in time: killed", slot.index, slot.proc.pid)
                slot.proc.kill()
                slot.proc.wait()
            slot.exit_codes.append(slot.proc.returncode)
            self.stop_codes.append(slot.proc.returncode)
            if slot.proc.returncode != 0:
                log.warning("worker %d (pid %d) stopped with %s", slot.index, slot.proc.pid,
                            describe_exit(slot.proc.returncode))
            slot.proc = None

    def run(self) -> int:
        """Start the workers, keep them running until asked to stop; 0 when all stopped cleanly."""
        self._install_signals()
        log.info("starting %d workers", len(self.slots), extra={"port": self.config.server.port})
        for slot in self.slots:
            self._start(slot)
        while self.stopping is None:
            self._wait()
            self._reap()
            if self.stopping is None:
                self._restart_due()
        self._reap()  # workers that already ended (a terminal's SIGINT reaches them too)
        self._stop_all()
        clean = not self.gave_up and all(code == 0 for code in self.stop_codes)
        log.info("stopped" if clean else "stopped with errors")
        return 0 if clean else 1


async def _migrate_once(url: str, config: Config) -> None:
    try:
        conn = await asyncpg.connect(url, timeout=config.database.connect_timeout)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc or type(exc).__name__}") from None
    try:
        for item in await migrate.migrate(conn):
            log.info("applied migration %s", item.name)
    finally:
        await conn.close()


def _check_port(config: Config) -> None:
    """Fail now if something already listens on the port: with SO_REUSEPORT alone, another process
    of this user (an old b3lb still running) would silently share it with the workers."""
    from tornado.netutil import bind_sockets

    for sock in bind_sockets(config.server.port, config.server.listen_address):
        sock.close()


def supervise(config: Config, config_path: str | None) -> int:
    setup_logging(config.server.log_level)
    tag_logs("supervisor")
    embedded: EmbeddedPostgres | None = None
    try:
        _check_port(config)
        url = config.database.url
        if not url:
            embedded = EmbeddedPostgres(embedded_data_dir(config))
            url = embedded.start()
            log.info("embedded PostgreSQL started", extra={"data_dir": str(embedded.data_dir)})
        asyncio.run(_migrate_once(url, config))
        return Supervisor(config, url, config_path).run()
    except (DatabaseUnavailable, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    except migrate.MigrationError as exc:
        log.error("cannot start: migration failed: %s", exc)
        return 1
    finally:
        shared_path(config.server.data_dir, os.getpid()).unlink(missing_ok=True)  # the workers' metrics
        if embedded is not None:
            embedded.stop()


def _die_with_parent(parent: int) -> None:
    """SIGTERM (a clean stop) when the supervisor dies, however it dies."""
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
        prctl(1, signal.SIGTERM, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's SIGTERM is all there is
        return
    if os.getppid() != parent:  # the supervisor died before prctl
        sys.exit(1)


def worker_main() -> int:
    index, ready_fd, parent = (int(part) for part in os.environ[WORKER_ENV].split(":"))
    _die_with_parent(parent)
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return 2
    return serve(config, worker=WorkerRole(index, ready_fd, parent))


if __name__ == "__main__":
    sys.exit(worker_main())
