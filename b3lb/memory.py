"""Memory housekeeping: freed heap pages back to the OS, and a garbage collector tuned for a server.

A poll cycle that rewrites many meeting lists builds tens of megabytes of XML for the database
and frees it right after. glibc keeps such freed space in the heap whenever a small live object
sits above it, so the process's RSS stayed at its peak. `malloc_trim` returns the free pages in
the middle of the heap as well. Other C libraries (musl) have no such call: then this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from collections.abc import Callable


def _load_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _load_trim()


def release_free_memory() -> bool:
    """Return free heap pages to the OS; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


# Objects allocated between two young-generation collections (CPython's default: 700). A poll
# cycle or a burst of requests allocates hundreds of thousands of short-lived containers; at 700
# the collector ran so often, and reached the older generations (every routed meeting) so often,
# that it took a tenth of a poll cycle with 10,000 meetings.
YOUNG_GENERATION_SIZE = 10_000


_settling = False  # whether settle_long_lived() freezes: only in a serving process, never in tests


def tune_garbage_collector() -> None:
    """After start-up: collect less often, and never walk what start-up built (modules, tables)."""
    global _settling
    _settling = True
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_SIZE, middle, old)


def settle_long_lived() -> None:
    """Collect the young generations, then freeze what survived (routing records, caches).

    A full collection walks every tracked object: with 100,000 routed meetings (three tracked
    objects each) it paused the event loop for 100-160 ms, and it came back whenever the oldest
    generation had grown by a quarter, which a busy server's meeting turnover guarantees. Frozen
    objects are still freed by reference counting the moment they are dropped; what freezing
    gives up is collecting reference cycles among them. The young collection first catches the
    cycles of finished requests; under 36,000 API calls (joins, creates, forwarded calls) with a
    freeze every 600 of them, a full collection afterwards found no garbage at all. Only after
    tune_garbage_collector(), i.e. in `b3lb serve` (a test process keeps its own garbage rules)."""
    if not _settling:
        return
    gc.collect(1)
    gc.freeze()


# Seconds between two settle_long_lived() calls of a serving process besides the ones after poll
# cycles and meeting reads. A collection walks what survived since the last one: under 2,000
# creates a second, five seconds of new meetings made it a 20 ms pause; a second's, some 4 ms.
SETTLE_INTERVAL = 1.0


async def settle_periodically(interval: float = SETTLE_INTERVAL) -> None:
    """settle_long_lived() every `interval` seconds until cancelled (started by `b3lb serve`)."""
    while True:
        await asyncio.sleep(interval)
        settle_long_lived()
