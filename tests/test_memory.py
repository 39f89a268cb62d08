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
