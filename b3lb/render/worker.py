"""Render workers: take render jobs from the database and render one video per recording profile.

A worker (`b3lb render`, or the one `b3lb serve` embeds when `render.embedded`) polls about every
POLL_INTERVAL seconds and keeps up to `render.concurrency` jobs going. Each job:

1. is claimed (b3lb/render/jobs.py: `FOR UPDATE SKIP LOCKED`, a lease, attempts + 1); a heartbeat
   task extends the lease every `render.heartbeat_seconds` and stores the progress. A heartbeat that
   finds the job no longer this claim's (requeued by an upload or `b3lb recording rerender`, taken
   over, deleted) stops the job: nothing more of it is stored;
2. downloads the set's archive from storage into a scratch folder (streamed, checked against the
   sha256 the upload recorded), extracts it safely (b3lb/render/pipeline.py) and renders each
   profile (linked to the set's secret, else its tenant, else all) with one ffmpeg run each;
3. stores each video as the set's record of that profile (the orphan rule, jobs.store_output), and
   finally deletes the job and makes the set RENDERED in one transaction (jobs.finish).

A failure (a render or storage error, a broken archive) queues the job again after
`render.backoff_seconds * 2**(attempt-1)`, up to `render.max_attempts`; then it is FAILED with the
reason and ffmpeg's last lines. A worker that dies mid-job (killed, machine lost) stops its
heartbeats: after `render.lease_seconds` another worker takes the job, reuses the records the
first one started, and finishes it. A worker stopped on purpose (SIGTERM) gives its jobs back.

Logs name a set by its public_id (its id is its nonce, the set's upload credential).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import asyncpg

from b3lb.config import Config
from b3lb.outage import Outage, describe, is_database_unavailable
from b3lb.recordings.records import RecordSetGone
from b3lb.recordings.retention import update_gauges
from b3lb.recordings.storage import Storage, StorageError
from b3lb.render import jobs
from b3lb.render.jobs import Claim, LostJob
from b3lb.render.metrics import JOBS, REALTIME_FACTOR, RENDER_SECONDS, RUNNING
from b3lb.render.model import RenderError

if TYPE_CHECKING:
    from b3lb.render.archive import Presentation
    from b3lb.render.model import Profile
    from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.render")

POLL_INTERVAL = 2.0  # seconds between looks at the queue while nothing wakes the worker
DOWNLOAD_BATCH = 1024 * 1024  # bytes per file write (one thread hop each)
RELEASE_TIMEOUT = 5.0  # seconds a stopping worker waits to give a job back
JOB_DIR_PREFIX = "job-"  # scratch folders: job-{pid}@{host}@{random}; this host's dead pids' go at start


class Rendered(Protocol):
    """What a renderer returns (pipeline.RenderOutput)."""

    @property
    def path(self) -> Path: ...
    @property
    def size(self) -> int: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def extension(self) -> str: ...  # 'mp4' | 'webm'


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


# The pipeline's functions (b3lb/render/pipeline.py); tests may pass their own.
Renderer = Callable[..., Awaitable[Rendered]]  # (presentation, profile, output, *, threads, progress)
Extractor = Callable[..., Any]  # (tar_path, dest, *, max_bytes, max_files): a coroutine function, or run in a thread
ProfileFactory = Callable[[asyncpg.Record], "Profile"]  # record_profile row -> pipeline.Profile


class JobFailed(Exception):
    """A failure of the job itself (not of the worker): reason for `b3lb recording show`."""

    def __init__(self, reason: str, *, permanent: bool = False, tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent  # retrying cannot help: FAILED at once
        self.tail = tail


class RendererUnavailable(Exception):
    """The render pipeline cannot be loaded on this machine (a missing library)."""


def default_name(role: str = "render") -> str:
    """`host:pid/role`: shown in `b3lb recording show` and in logs."""
    return f"{socket.gethostname()}:{os.getpid()}/{role}"[:200]


def work_root(config: Config) -> Path:
    return Path(config.render.work_dir) if config.render.work_dir else Path(config.server.data_dir) / "render"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def host_tag() -> str:
    """This machine's name as scratch folders carry it: render.work_dir may be shared by several
    machines (or containers, each with its own pids), and a pid only means something on its host."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"


def job_dir_prefix() -> str:
    """`job-{pid}@{host}@`: mkdtemp adds the random rest (letters, digits, `_`: never `@`)."""
    return f"{JOB_DIR_PREFIX}{os.getpid()}@{host_tag()}@"


def stale_work_dirs(root: Path) -> list[Path]:
    """Scratch folders of this host's processes that died (killed mid-job); other hosts' folders and
    live processes' stay."""
    if not root.is_dir():
        return []
    host, stale = host_tag(), []
    for path in root.glob(f"{JOB_DIR_PREFIX}*@*@*"):
        parts = path.name[len(JOB_DIR_PREFIX) :].split("@")
        if len(parts) != 3 or parts[1] != host or not parts[0].isdigit():
            continue
        pid = int(parts[0])
        if pid != os.getpid() and not _pid_alive(pid) and path.is_dir():
            stale.append(path)
    return stale


def remove_stale_work_dirs(root: Path) -> int:
    """Start removing `stale_work_dirs` in a thread (a killed render can leave gigabytes: start-up
    must not wait for them); the number of folders being removed."""
    stale = stale_work_dirs(root)
    if stale:
        threading.Thread(target=_remove_all, args=(stale,), name="render scratch clean-up", daemon=True).start()
    return len(stale)


def _remove_all(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class _Progress:
    """How far one job got: `fraction` (0..1 over all its profiles) goes to heartbeats and logs."""

    claim: Claim
    profiles: int = 1
    fraction: float = 0.0
    logged_decile: int = 0
    lost: bool = False

    def update(self, index: int, part: float) -> None:
        part = min(max(float(part), 0.0), 1.0)
        self.fraction = max(self.fraction, (index + part) / max(self.profiles, 1))
        decile = int(self.fraction * 10 + 1e-9)
        if decile > self.logged_decile and decile < 10:
            self.logged_decile = decile
            log.info("render job %s: %d%% (profile %d of %d)", self.claim.public_id, decile * 10,
                     min(index + 1, self.profiles), self.profiles)  # fmt: skip


def _write(sink: IO[bytes], digest: _Digest, data: bytes) -> None:
    digest.update(data)
    sink.write(data)


class RenderWorker:
    """One worker: `await run()` until cancelled, or `run_once()` (tests), `run(until_idle=True)`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        storage: Storage,
        config: Config,
        name: str | None = None,
        *,
        render: Renderer | None = None,
        extract: Extractor | None = None,
        profile: ProfileFactory | None = None,
        outage: Outage | None = None,
    ) -> None:
        self.pool = pool
        self.storage = storage
        self.config = config
        self.settings = config.render
        self.name = (name or default_name())[:200]
        self.outage = outage or Outage("database", logger=log)
        self.work_root = work_root(config)
        self._render = render
        self._extract = extract
        self._profile = profile
        self._render_errors: tuple[type[BaseException], ...] = (RenderError,)
        self._prepared = False

    # -- set-up -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Load the pipeline (what the caller did not pass) and make the scratch folder; raises
        RendererUnavailable with the reason when this machine cannot render."""
        if self._render is None or self._extract is None or self._profile is None:
            try:
                from b3lb.render import pipeline
            except (ImportError, OSError) as exc:  # e.g. a system library of the SVG rasteriser
                raise RendererUnavailable(f"the render pipeline cannot be loaded: {describe(exc)}") from None
            from b3lb.render import isolated  # each step in a child process: this one's loop stays free

            self._render = self._render or functools.partial(isolated.render, ffmpeg=self.settings.ffmpeg)
            self._extract = self._extract or isolated.extract_async
            self._profile = self._profile or pipeline.Profile.from_row
            self._render_errors = (pipeline.RenderError,)
        try:
            self.work_root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RendererUnavailable(f"render.work_dir {str(self.work_root)!r}: {exc.strerror}") from None
        removed = remove_stale_work_dirs(self.work_root)
        if removed:
            log.info("removed %d scratch folders of render workers that died", removed)
        self._prepared = True

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, *, until_idle: bool = False) -> int:
        """Take and render jobs, `render.concurrency` at a time, until cancelled (or, with
        `until_idle`, until no job is due and none is running). Returns the jobs processed."""
        if not self._prepared:
            self.prepare()
        wake = asyncio.Event()  # a job ended: a slot is free
        running: set[asyncio.Task[str]] = set()
        processed = 0

        def finished(task: asyncio.Task[str]) -> None:
            running.discard(task)
            wake.set()

        log.info("render worker %s started (%d jobs at a time)", self.name, self.settings.concurrency)
        try:
            while True:
                while len(running) < self.settings.concurrency and (job := await self._claim()) is not None:
                    task = asyncio.create_task(self._process(job), name=f"render {job.public_id}")
                    running.add(task)
                    task.add_done_callback(finished)
                    processed += 1
                if until_idle and not running:
                    return processed
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), POLL_INTERVAL)
                except TimeoutError:
                    pass
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            log.info("render worker %s stopped", self.name)

    async def run_once(self) -> str | None:
        """Claim one due job and process it to its end: its outcome, or None when none was due."""
        if not self._prepared:
            self.prepare()
        job = await self._claim()
        return None if job is None else await self._process(job)

    async def _claim(self) -> Claim | None:
        try:
            for row in await jobs.fail_abandoned(self.pool, self.settings.max_attempts):
                JOBS.labels(outcome="failed").inc()
                log.error("render job %s FAILED: worker %s stopped without finishing on attempt %d (lease expired)",
                          row["public_id"], row["worker"] or "?", row["attempts"])  # fmt: skip
            job = await jobs.claim(self.pool, self.name, self.settings.lease_seconds)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next poll tries again
            self._database_failed("render queue", exc)
            return None
        self.outage.succeeded()
        if job is not None:
            took = f", taken over from {job.previous_worker} (lease expired)" if job.previous_worker else ""
            log.info("render job %s RUNNING on %s, attempt %d%s", job.public_id, self.name, job.attempts, took)
        return job

    def _database_failed(self, what: str, exc: BaseException) -> None:
        if is_database_unavailable(exc):
            self.outage.failed(f"{what}: {describe(exc)}")
        else:
            log.exception("%s failed", what)

    # -- one job ------------------------------------------------------------------------------

    async def _process(self, job: Claim) -> str:
        """Run one claimed job to its end; its outcome (a JOBS label)."""
        RUNNING.inc()
        progress = _Progress(job)
        task = asyncio.current_task()
        assert task is not None
        beat = asyncio.create_task(self._heartbeat(job, progress, task), name=f"render heartbeat {job.public_id}")
        work: Path | None = None
        try:
            work = await self._work_dir(job)
            await self._render_job(job, progress, work)
            outcome = "rendered"
        except asyncio.CancelledError:
            if not progress.lost or task.uncancel() > 0:  # stopped from outside: give the job back
                beat.cancel()
                await self._release(job)
                raise
            outcome = "lost"
        except LostJob as exc:
            log.warning("render job %s dropped by %s: %s", job.public_id, self.name, exc)
            outcome = "lost"
        except Exception as exc:
            outcome = await self._failed(job, exc)
        finally:
            beat.cancel()
            RUNNING.dec()
            if work is not None:
                await asyncio.to_thread(shutil.rmtree, work, True)
        JOBS.labels(outcome=outcome).inc()
        await self._refresh_gauges()
        return outcome

    async def _work_dir(self, job: Claim) -> Path:
        try:
            return Path(await asyncio.to_thread(
                tempfile.mkdtemp, prefix=job_dir_prefix(), dir=self.work_root))  # fmt: skip
        except OSError as exc:
            raise JobFailed(f"cannot make a scratch folder in {self.work_root}: {exc.strerror}") from None

    async def _render_job(self, job: Claim, progress: _Progress, work: Path) -> None:
        if not job.archive_key:
            raise JobFailed("the record set has no uploaded archive", permanent=True)
        rows = await jobs.profiles(self.pool, job.recordset_id)
        if not rows:
            raise JobFailed("no recording profile to render: add one (b3lb recordprofile add), then "
                            "b3lb recording rerender", permanent=True)  # fmt: skip
        progress.profiles = len(rows)
        started = time.monotonic()
        presentation: Presentation | None = None
        for index, row in enumerate(rows):
            if row["id"] in job.done_profiles:
                log.info("render job %s: profile %r was stored by an earlier attempt", job.public_id, row["name"])
            else:
                if presentation is None:
                    archive = work / "raw.tar"
                    await self._download(job, archive)
                    presentation = await self._unpack(archive, work / "presentation")
                await self._render_profile(job, progress, presentation, row, index, work)
            progress.update(index, 1.0)
        await jobs.finish(self.pool, self.storage, job, [row["id"] for row in rows], self.settings.lease_seconds)
        log.info("render job %s RENDERED by %s: %d profiles in %.1f s", job.public_id, self.name, len(rows),
                 time.monotonic() - started)  # fmt: skip

    async def _download(self, job: Claim, target: Path) -> None:
        """The archive from storage into `target`, streamed, checked against its recorded sha256."""
        digest = hashlib.sha256()
        try:
            sink = await asyncio.to_thread(target.open, "wb")
            try:
                batch = bytearray()
                async for chunk in self.storage.read(job.archive_key):
                    batch += chunk
                    if len(batch) >= DOWNLOAD_BATCH:
                        data, batch = bytes(batch), bytearray()
                        await asyncio.to_thread(_write, sink, digest, data)
                if batch:
                    await asyncio.to_thread(_write, sink, digest, bytes(batch))
            finally:
                await asyncio.to_thread(sink.close)
        except OSError as exc:
            raise JobFailed(f"cannot write the archive to {target.parent}: {exc.strerror or exc}") from None
        if digest.hexdigest() != job.archive_sha256:
            raise JobFailed("the stored archive does not match its recorded sha256 (replaced meanwhile, or damaged)")

    async def _unpack(self, archive: Path, dest: Path) -> Presentation:
        assert self._extract is not None
        try:
            limits = {"max_bytes": self.settings.max_archive_bytes, "max_files": self.settings.max_archive_files}
            if asyncio.iscoroutinefunction(self._extract):  # isolated.extract_async: a cancel kills its child
                presentation = await self._extract(archive, dest, **limits)
            else:
                presentation = await asyncio.to_thread(self._extract, archive, dest, **limits)
            await asyncio.to_thread(archive.unlink)  # its files are out: give the disk back
        except OSError as exc:
            raise JobFailed(f"cannot extract the archive: {exc.strerror or exc}") from None
        return presentation

    async def _render_profile(
        self, job: Claim, progress: _Progress, presentation: Presentation, row: asyncpg.Record, index: int, work: Path
    ) -> None:
        assert self._render is not None and self._profile is not None
        profile = self._profile(row)
        name, fmt = row["name"], row["format"]
        output = work / f"profile-{row['id']}.{'webm' if fmt == 'WEBM' else 'mp4'}"
        started = time.monotonic()
        result = await self._render(presentation, profile, output, threads=self.settings.threads,
                                    progress=lambda part: progress.update(index, part))  # fmt: skip
        elapsed = time.monotonic() - started
        path = Path(result.path)
        if result.size <= 0 or not path.is_file():
            raise JobFailed(f"profile {name!r}: the renderer produced no video")
        RENDER_SECONDS.labels(format=fmt).observe(elapsed)
        factor = result.duration_s / elapsed if elapsed > 0 and result.duration_s else 0.0
        if factor:
            REALTIME_FACTOR.labels(format=fmt).observe(factor)
        try:
            record = await jobs.store_output(
                self.pool, self.storage, job, profile_id=row["id"], extension=result.extension, path=path,
                lease_seconds=self.settings.lease_seconds, processing_ms=int(elapsed * 1000),
            )  # fmt: skip
        except RecordSetGone:  # the profile was removed meanwhile
            record = None
        await asyncio.to_thread(path.unlink, True)
        stored = f"record {record.record_id}" if record is not None else "not stored (its record is being deleted)"
        log.info("render job %s: profile %r rendered in %.1f s (%.1fx real time, %d bytes), %s", job.public_id,
                 name, elapsed, factor, result.size, stored)  # fmt: skip

    async def _heartbeat(self, job: Claim, progress: _Progress, task: asyncio.Task[Any]) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                held = await jobs.extend(self.pool, job, self.settings.lease_seconds, progress.fraction)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep trying: the lease lasts a few heartbeats
                self._database_failed("render heartbeat", exc)
                continue
            if not held:
                log.warning("render job %s is no longer %s's (queued again, taken over or deleted): stopping it",
                            job.public_id, self.name)  # fmt: skip
                progress.lost = True
                task.cancel()
                return

    async def _failed(self, job: Claim, exc: Exception) -> str:
        """Record a failed attempt: retry later or FAILED. Its outcome label."""
        known = (JobFailed, StorageError, *self._render_errors)
        if not isinstance(exc, known) and is_database_unavailable(exc):
            self._database_failed("render job", exc)
            log.warning("render job %s interrupted (database unavailable); taken again after its lease",
                        job.public_id)  # fmt: skip
            return "interrupted"
        if not isinstance(exc, known):
            log.exception("render job %s: unexpected error", job.public_id)
        reason = str(getattr(exc, "reason", "") or describe(exc))
        tail = str(getattr(exc, "tail", "") or "")
        try:
            state = await jobs.retry_or_fail(
                self.pool, job, reason=reason, tail=tail, max_attempts=self.settings.max_attempts,
                backoff=self.settings.backoff_seconds, permanent=bool(getattr(exc, "permanent", False)),
            )  # fmt: skip
        except Exception as db_exc:  # the lease runs out and the job is taken again
            self._database_failed("render job state", db_exc)
            return "interrupted"
        if state is None:
            log.warning("render job %s failed on %s, but is no longer its: %s", job.public_id, self.name, reason)
            return "lost"
        if state == "FAILED":
            log.error("render job %s FAILED on attempt %d of %d: %s", job.public_id, job.attempts,
                      self.settings.max_attempts, reason)  # fmt: skip
            return "failed"
        log.warning("render job %s QUEUED again after attempt %d of %d failed: %s", job.public_id, job.attempts,
                    self.settings.max_attempts, reason)  # fmt: skip
        return "retry"

    async def _release(self, job: Claim) -> None:
        try:
            if await asyncio.wait_for(jobs.release(self.pool, job), RELEASE_TIMEOUT):
                log.info("render job %s QUEUED again: worker %s stopped", job.public_id, self.name)
                JOBS.labels(outcome="released").inc()
        except Exception as exc:  # its lease runs out instead
            log.warning("render job %s not given back (%s); taken again after its lease", job.public_id,
                        describe(exc))  # fmt: skip

    async def _refresh_gauges(self) -> None:
        try:
            await update_gauges(self.pool)
        except Exception as exc:  # gauges wait for the next job or housekeeping
            self._database_failed("render gauges", exc)


def start_embedded(runtime: Runtime) -> None:
    """`b3lb serve` with render.embedded: one worker on the server's pool and storage."""
    worker = RenderWorker(runtime.pool, runtime.storage, runtime.config, default_name("serve"),
                          outage=runtime.database)  # fmt: skip
    try:
        worker.prepare()
    except RendererUnavailable as exc:
        log.error("no embedded render worker: %s; recordings wait for a `b3lb render` worker", exc)
        return
    runtime.add_task("render worker", worker.run())
