"""Event-loop lag: how late the loop runs a callback that is due, as a Prometheus histogram.

A probe coroutine sleeps LAG_PROBE_INTERVAL and observes by how much it overslept. Anything that
holds the loop (a long synchronous step, a big parse, a GC pause) delays every request the same
way, so this is the latency floor of the process; `b3lb_event_loop_lag_seconds` is exported in the
process part of the global /b3lb/metrics view, and the benchmarks report its p99 and maximum.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Histogram

LAG_PROBE_INTERVAL = 0.02  # seconds: 50 observations a second, a few microseconds of work each
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)  # and +Inf

EVENT_LOOP_LAG = Histogram(
    "b3lb_event_loop_lag_seconds",
    "How much later than due the event loop ran a probe that slept 0.02 s",
    buckets=LAG_BUCKETS,
)


async def probe(histogram: Histogram = EVENT_LOOP_LAG, interval: float = LAG_PROBE_INTERVAL) -> None:
    """Observe the oversleep of every `interval` sleep until cancelled.

    Measured with perf_counter: uvloop's loop.time() is cached per loop iteration (and in whole
    milliseconds), so it would miss the very stalls the probe is there to see. A timer may fire
    a fraction of a millisecond early (uvloop rounds to milliseconds): counted as no lag."""
    observe = histogram.observe
    clock = time.perf_counter
    sleep = asyncio.sleep
    while True:
        started = clock()
        await sleep(interval)
        lag = clock() - started - interval
        observe(lag if lag > 0.0 else 0.0)
