"""The recording work `b3lb serve` runs in the background.

- every process delivers recording-ready callbacks from the durable outbox (callbacks.py; rows are
  claimed with FOR UPDATE SKIP LOCKED, so processes share the work and never send one twice);
- the process that polls (leader.py) also keeps house (retention.py): expired sets, unfinished
  deletions, incomplete writes. It runs beside the poller, never inside a poll cycle, so deleting
  thousands of files cannot delay the fleet's health checks.
"""

from __future__ import annotations

import asyncio
import logging

from b3lb.outage import describe, is_database_unavailable
from b3lb.recordings import callbacks, retention
from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.recordings")


def start(runtime: Runtime) -> None:
    runtime.add_task("recording callbacks", callbacks.run_outbox(runtime))
    runtime.add_task("recording housekeeping", run_housekeeping(runtime))


async def run_housekeeping(runtime: Runtime) -> None:
    interval = runtime.config.recordings.housekeeping_interval
    while True:
        await asyncio.sleep(interval)
        if not runtime.polling:  # only the leader keeps house
            continue
        try:
            await retention.housekeep(runtime)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next run tries again; files before rows keeps it consistent
            if is_database_unavailable(exc):
                runtime.database.failed(f"recording housekeeping: {describe(exc)}")
            else:
                log.exception("recording housekeeping failed")
