"""One /b3lb/metrics text for all workers of a `b3lb serve --workers N` supervisor.

A scrape through the shared port reaches any worker. If each worker rendered its own text, the
counters would differ from worker to worker by what each has not flushed yet and by when each
rendered, and Prometheus would take every step down from one worker's value to another's for a
counter reset. So worker 0 publishes each render to a file under {server.data_dir}/run, and the
other workers serve the newest file (their own unflushed counts reach it through the database
within api.counter_flush_interval). Only while there is no fresh file (worker 0 starting or
restarting) do they render themselves. The process part of the global view (latency, event-loop
lag, CPU) stays each worker's own, labelled worker="N".
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import os
import struct
import time
from pathlib import Path

from b3lb.metrics import Generation, TenantBlock

log = logging.getLogger("b3lb.metrics")

FORMAT = 1
CHUNK = 50  # tenants per marshalled piece: loading yields to the event loop between pieces
STAT_EVERY = 0.25  # seconds between two looks at the file (a scrape costs no system call)
_LENGTH = struct.Struct("<Q")


def shared_path(data_dir: str, supervisor_pid: int) -> Path:
    return Path(data_dir) / "run" / f"metrics-{supervisor_pid}.bin"


class SharedRenders:
    def __init__(self, path: Path, *, publisher: bool, max_age: float) -> None:
        self.path, self.publisher, self.max_age = path, publisher, max_age
        self._checked = float("-inf")
        self._published: int | None = None
        self._write_failed = False

    def current(self) -> int | None:
        """The file's mtime_ns when a fresh one is published (looked at every STAT_EVERY), else None."""
        now = time.monotonic()
        if now - self._checked >= STAT_EVERY:
            self._checked = now
            try:
                stat = os.stat(self.path)
            except OSError:
                self._published = None
            else:
                fresh = time.time() - stat.st_mtime < self.max_age
                self._published = stat.st_mtime_ns if fresh else None
        return self._published

    async def publish(self, generation: Generation) -> None:
        """Write the generation for the other workers (renamed into place: never read half-written)."""
        pieces = []
        for start in range(0, len(generation.blocks), CHUNK):
            chunk = generation.blocks[start : start + CHUNK]
            pieces.append(marshal.dumps([(b.tenant_id, b.lines, b.own) for b in chunk]))
            await asyncio.sleep(0)
        header = marshal.dumps((FORMAT, generation.cycles, generation.node_text, [len(p) for p in pieces]))
        data = b"".join((_LENGTH.pack(len(header)), header, *pieces))
        try:
            await asyncio.to_thread(_replace, self.path, data)
        except OSError as exc:
            if not self._write_failed:  # the followers render themselves meanwhile
                log.warning("cannot publish the metrics to the other workers: %s", exc)
            self._write_failed = True
        else:
            self._write_failed = False

    async def load(self, published: int) -> Generation:
        """The published generation; raises ValueError (or OSError) when it cannot be read."""
        data = await asyncio.to_thread(self.path.read_bytes)
        (size,) = _LENGTH.unpack_from(data)
        position = _LENGTH.size + size
        version, cycles, node_text, lengths = marshal.loads(data[_LENGTH.size : position])
        if version != FORMAT:
            raise ValueError(f"metrics file format {version}")
        blocks = []
        for length in lengths:
            blocks.extend(TenantBlock(*entry) for entry in marshal.loads(data[position : position + length]))
            position += length
            await asyncio.sleep(0)
        return Generation(time.monotonic(), cycles, node_text, blocks, source=published)


def _replace(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
