"""The /b3lb/metrics text, rendered once per poll cycle and served from memory.

A scrape costs a dictionary lookup and a socket write; the rendering (b3lb/metrics.py) happens
once per poll cycle for all views together:
- in the process that polls, when `runtime.poller.cycles` moved on (the figures just changed);
- elsewhere, when the last render is older than `poller.interval` (the poller's writes reach
  this process through the database).
Renders are single-flight, and a stale text keeps being served while its successor renders.
`b3lb serve` runs `MetricsCache.run`, which re-renders right after each poll cycle while anyone
scrapes; without it (the test harness) a scrape that finds its text stale starts the render.

The process part of the global view (request latency, event-loop lag, process metrics) is this
process's own and is kept for PROCESS_MAX_AGE. Workers of `b3lb serve --workers N` serve worker 0's
render instead of their own (b3lb/metrics_shared.py says why).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from b3lb import metrics
from b3lb.metrics import GLOBAL, Generation
from b3lb.metrics_shared import SharedRenders, shared_path
from b3lb.outage import describe, is_database_unavailable
from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.metrics")

PROCESS_MAX_AGE = 1.0  # seconds the process part of the global view is served before a re-render
CHECK_EVERY = 0.25  # seconds between two looks for a finished poll cycle (MetricsCache.run)
IDLE_AFTER = 600.0  # seconds without a scrape after which run() stops rendering ahead
RETRY_AFTER = 1.0  # seconds after a failed render before a scrape may start another
POLLING_MAX_AGE = 3  # poll intervals a render may age in the polling process (its poller stalled)
SHARED_MAX_AGE = 30.0  # seconds worker 0's render is served by the others while it is not renewed

View = tuple[str, int]


@dataclass
class ProcessPart:
    made: float
    text: bytes
    gzip_tail: tuple[int, bytes] | None = None  # (serial of the Generation it continues, bytes)


class MetricsCache:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.generation: Generation | None = None
        self.process: ProcessPart | None = None
        self.last_request = float("-inf")
        self.global_gzip_wanted = float("-inf")  # when a scrape last asked for the global view gzipped
        self.renders = 0
        self._floor: dict[int, list[int]] = {}  # counters never go down: metrics.take_snapshot
        self._building: asyncio.Task[Generation] | None = None
        self._processing: asyncio.Task[ProcessPart] | None = None
        self._failed: tuple[float, BaseException] | None = None
        # Set by `b3lb serve --workers N` (b3lb/server.py): the render shared by the workers, and
        # the worker="N" label of this process's own metrics.
        self.shared: SharedRenders | None = None
        self.process_labels: dict[str, str] = {}

    def share_between_workers(self, index: int, supervisor_pid: int) -> None:
        """This process is worker `index` of a supervisor: serve one render for all (metrics_shared.py)."""
        config = self.runtime.config
        self.shared = SharedRenders(shared_path(config.server.data_dir, supervisor_pid), publisher=index == 0,
                                    max_age=max(POLLING_MAX_AGE * config.poller.interval, SHARED_MAX_AGE))
        self.process_labels = {"worker": str(index)}

    # -- freshness ------------------------------------------------------------------------

    def stale(self, generation: Generation) -> bool:
        shared = self.shared
        if shared is not None and not shared.publisher:
            published = shared.current()
            if published is not None:  # worker 0's newest render is what this worker serves
                return published != generation.source
        runtime = self.runtime
        age = time.monotonic() - generation.made
        interval = runtime.config.poller.interval
        if runtime.polling and runtime.poller is not None:
            return runtime.poller.cycles != generation.cycles or age >= POLLING_MAX_AGE * interval
        return age >= interval

    def kick(self) -> None:
        """Start a render in the background unless one runs or the last one failed just now."""
        if self._building is not None and not self._building.done():
            return
        if self._failed is not None and time.monotonic() - self._failed[0] < RETRY_AFTER:
            return
        task = self._building = asyncio.get_running_loop().create_task(self._build(), name="metrics render")
        task.add_done_callback(_retrieve)

    async def refresh(self) -> Generation:
        """A new generation (joining a render under way); raises what the render raised."""
        if self._building is None or self._building.done():
            failed = self._failed
            if failed is not None and time.monotonic() - failed[0] < RETRY_AFTER:
                raise failed[1]
            self.kick()
        assert self._building is not None
        return await asyncio.shield(self._building)  # a scrape that goes away never cancels the render

    async def _build(self) -> Generation:
        try:
            generation = await self._load_shared() or await metrics.build_generation(self.runtime, self._floor)
            if time.monotonic() - self.global_gzip_wanted < IDLE_AFTER:  # ready before anyone asks
                await generation.compress_global()
            if self.shared is not None and self.shared.publisher:
                await self.shared.publish(generation)
        except Exception as exc:
            repeated = self._failed is not None and repr(self._failed[1]) == repr(exc)
            self._failed = (time.monotonic(), exc)
            if is_database_unavailable(exc):  # logged once per outage
                self.runtime.database.failed(f"metrics: {describe(exc)}")
            elif not repeated:  # a bug: logged once, not once a second
                log.exception("rendering the metrics failed")
            raise
        self._failed = None
        self.generation = generation
        self.renders += 1
        return generation

    async def _load_shared(self) -> Generation | None:
        """Worker 0's newest render, in a worker that serves it; None: render here."""
        shared = self.shared
        if shared is None or shared.publisher or (published := shared.current()) is None:
            return None
        try:
            return await shared.load(published)
        except (OSError, ValueError, EOFError, TypeError) as exc:  # replaced or cut meanwhile: render here
            log.debug("cannot load the shared metrics render: %s", exc)
            return None

    async def _process_part(self) -> ProcessPart:
        part = ProcessPart(time.monotonic(), await metrics.render_process(labels=self.process_labels))
        self.process = part
        return part

    # -- serving ------------------------------------------------------------------------------

    def ready(self, view: View, gzip: bool) -> list[bytes] | None:
        """The answer's body chunks if everything is at hand (the usual case), else None."""
        self.last_request = time.monotonic()
        generation = self.generation
        if generation is None or not generation.has(view):
            return None
        if self.stale(generation):
            self.kick()
        if view != GLOBAL:
            return [generation.gzip(view) if gzip else generation.body(view)]
        self.global_gzip_wanted = self.last_request if gzip else self.global_gzip_wanted
        process = self._fresh_process()
        if process is None:
            return None
        if not gzip:
            return [generation.body(view), process.text]
        if generation.compressor is None:
            return None
        return [generation.gzip_prefix or b"", self._gzip_tail(generation, process)]

    async def get(self, view: View, gzip: bool) -> list[bytes] | None:
        """The answer's body chunks, waiting for what is missing; None: no such view (any more)."""
        generation = self.generation
        if generation is None or not generation.has(view):
            generation = await self.refresh()
            if not generation.has(view):
                return None
        if view != GLOBAL:
            return [generation.gzip(view) if gzip else generation.body(view)]
        process = self._fresh_process() or await self._wait_process()
        if not gzip:
            return [generation.body(view), process.text]
        if generation.compressor is None:
            self.global_gzip_wanted = time.monotonic()
            await generation.compress_global()
        return [generation.gzip_prefix or b"", self._gzip_tail(generation, process)]

    def _fresh_process(self) -> ProcessPart | None:
        process = self.process
        if process is not None and time.monotonic() - process.made >= PROCESS_MAX_AGE:
            if self._processing is None or self._processing.done():
                self._processing = asyncio.get_running_loop().create_task(self._process_part())
                self._processing.add_done_callback(_retrieve)
        return process

    async def _wait_process(self) -> ProcessPart:
        if self._processing is None or self._processing.done():
            self._processing = asyncio.get_running_loop().create_task(self._process_part())
            self._processing.add_done_callback(_retrieve)
        return await asyncio.shield(self._processing)

    @staticmethod
    def _gzip_tail(generation: Generation, process: ProcessPart) -> bytes:
        """The process part compressed on a copy of the global view's compressor, which ends the
        gzip stream: one valid gzip body, the big part compressed once per generation."""
        tail = process.gzip_tail
        if tail is None or tail[0] != generation.serial:
            assert generation.compressor is not None
            compressor = generation.compressor.copy()
            tail = process.gzip_tail = (generation.serial, compressor.compress(process.text) + compressor.flush())
        return tail[1]

    # -- rendering ahead ----------------------------------------------------------------------

    async def run(self) -> None:
        """Re-render right after each poll cycle (or interval) while anyone scrapes; always in the
        worker that renders for the others (it cannot know whether they are scraped)."""
        while True:
            await asyncio.sleep(CHECK_EVERY)
            generation = self.generation
            publishing = self.shared is not None and self.shared.publisher
            if not publishing and (generation is None or time.monotonic() - self.last_request > IDLE_AFTER):
                continue
            if generation is None or self.stale(generation):
                try:
                    await self.refresh()
                except Exception:  # logged by _build; the next check tries again
                    await asyncio.sleep(RETRY_AFTER)


def _retrieve(task: asyncio.Task[object]) -> None:
    """Mark a background render's failure as seen (it was logged where it happened)."""
    if not task.cancelled():
        task.exception()
