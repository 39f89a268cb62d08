"""b3lb/memory.py: long-lived objects are frozen only in a serving process, never in a test process."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc
from b3lb import memory
kept = [[n] for n in range(50_000)]  # tracked objects that outlive the request that made them
before = gc.get_freeze_count()
memory.settle_long_lived()
untouched = gc.get_freeze_count() == before
memory.tune_garbage_collector()  # what `b3lb serve` does once it is up
more = [[n] for n in range(50_000)]
frozen_at_start = gc.get_freeze_count()
memory.settle_long_lived()
print(untouched, gc.get_freeze_count() - frozen_at_start >= 50_000)
"""


def test_records_made_after_start_up_are_frozen_only_in_a_serving_process() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["True", "True"]


PERIODIC = """
import asyncio, gc
from b3lb import memory
memory.tune_garbage_collector()

async def main():
    settling = asyncio.create_task(memory.settle_periodically(interval=0.05))
    await asyncio.sleep(0.01)
    start = gc.get_freeze_count()
    made = [[n] for n in range(20_000)]  # records a burst of creates leaves behind
    quiet = gc.get_freeze_count() == start  # nothing frozen before the next tick
    await asyncio.sleep(0.2)
    settling.cancel()
    return quiet, gc.get_freeze_count() - start >= 20_000, len(made)

print(*asyncio.run(main()))
"""


def test_a_serving_process_settles_new_records_every_interval() -> None:
    """Between poll cycles too: a collection then walks one interval's records, not five seconds' worth."""
    done = subprocess.run([sys.executable, "-c", PERIODIC], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["True", "True", "20000"]
