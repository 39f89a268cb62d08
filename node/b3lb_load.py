#!/usr/bin/python3
"""b3lb-load: the CPU load agent of a BigBlueButton node (spec 4.11).

Every `--interval` seconds (10) it reads the first line of /proc/stat, keeps the last `--window` (6)
intervals and writes `int(10000 * max(short, long))` and a newline to /run/b3lb/load, which nginx serves
as `GET /b3lb/load`; the load balancer folds it into the node's load (spec 4.13).

- short = 1 - Δidle/Δtotal of the last interval (a burst shows up at once),
- long  = 1 - ΣΔidle/ΣΔtotal over the kept intervals (≈ 60 s, a steady load is not forgotten).

Python 3 standard library only: it runs on the node, next to BigBlueButton, outside any virtualenv.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SCALE = 10000
DEFAULT_STAT = "/proc/stat"
DEFAULT_OUTPUT = "/run/b3lb/load"
DEFAULT_INTERVAL = 10.0
DEFAULT_WINDOW = 6
# user nice system idle iowait irq softirq steal: guest and guest_nice are already counted in user/nice.
SUMMED_FIELDS = 8
IDLE_FIELD = 3
# A /proc/stat line is ~100 bytes; anything much longer is not the file we expect.
MAX_LINE = 4096
# --once gives up after this many intervals without a usable value (unreadable file, Δtotal = 0).
ONCE_TRIES = 3


class MalformedStat(ValueError):
    """The first line of the stat file is not an aggregate `cpu` line."""


@dataclass(frozen=True)
class Sample:
    idle: int
    total: int


def parse_stat_line(line: str) -> Sample:
    """idle (4th value) and total (sum of the first 8 values) of the aggregate `cpu` line.

    Old kernels print fewer than 8 values (4 before 2.5.41, 7 before 2.6.11): the total is then the sum
    of what is there; at least `idle` must be present.
    """
    fields = line.split()
    if not fields or fields[0] != "cpu":
        raise MalformedStat(f"first line does not start with 'cpu': {line[:60]!r}")
    values: list[int] = []
    for text in fields[1 : 1 + SUMMED_FIELDS]:
        if not (text.isascii() and text.isdigit()):  # no signs, no floats, no non-ASCII digits
            raise MalformedStat(f"not a counter: {text[:30]!r}")
        values.append(int(text))
    if len(values) <= IDLE_FIELD:
        raise MalformedStat(f"only {len(values)} values, the 4th (idle) is missing")
    return Sample(idle=values[IDLE_FIELD], total=sum(values))


def read_sample(path: str) -> Sample:
    with open(path, encoding="ascii", errors="replace") as stat:
        line = stat.readline(MAX_LINE)
    return parse_stat_line(line)


class LoadTracker:
    """The last `window` intervals between consecutive samples, and the load value they give."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.previous: Sample | None = None
        self.intervals: collections.deque[tuple[int, int]] = collections.deque(maxlen=window)

    def add(self, sample: Sample) -> int | None:
        """Record a sample; the load value it gives, or None while there is no interval yet."""
        previous, self.previous = self.previous, sample
        if previous is not None:
            d_idle, d_total = sample.idle - previous.idle, sample.total - previous.total
            if d_idle < 0 or d_total < 0:
                # A counter went backwards (wrap, CPU hot-unplug, a restored VM): the old intervals are
                # not comparable with the new ones, so start again from this sample.
                log(f"counters went backwards (idle {d_idle:+d}, total {d_total:+d}); history reset")
                self.intervals.clear()
            elif d_total > 0:
                # Δtotal = 0 (no tick between two reads) carries no information: skip the interval.
                self.intervals.append((min(d_idle, d_total), d_total))
        return self.value()

    def value(self) -> int | None:
        if not self.intervals:
            return None
        last_idle, last_total = self.intervals[-1]
        short = 1.0 - last_idle / last_total
        long = 1.0 - sum(i for i, _ in self.intervals) / sum(t for _, t in self.intervals)
        return max(0, min(SCALE, int(SCALE * max(short, long))))


def write_atomically(path: str, value: int) -> None:
    """Write `value\\n` so that a reader sees the old or the new file, never a partial one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".load.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(f"{value}\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)  # mkstemp makes 0600; nginx runs as another user
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def log(message: str) -> None:
    print(f"b3lb-load: {message}", file=sys.stderr, flush=True)


def take_sample(tracker: LoadTracker, stat: str) -> int | None:
    """Read one sample into the tracker; a sample that cannot be read is skipped (and logged)."""
    try:
        sample = read_sample(stat)
    except (OSError, MalformedStat) as exc:
        log(f"skipping sample from {stat}: {exc}")
        return tracker.value()
    return tracker.add(sample)


def publish(output: str, value: int | None) -> bool:
    if value is None:
        return True
    try:
        write_atomically(output, value)
    except OSError as exc:
        log(f"cannot write {output}: {exc}")
        return False
    return True


def run(stat: str, output: str, interval: float, window: int, once: bool, stop: threading.Event) -> int:
    """Sample every `interval` seconds until `stop` is set (after the first value if `once`)."""
    tracker = LoadTracker(window)
    take_sample(tracker, stat)
    deadline = time.monotonic()
    tries = 0
    while True:
        deadline += interval
        # Sleep to a fixed schedule: a slow write does not stretch the intervals.
        if stop.wait(max(0.0, deadline - time.monotonic())):
            return 0
        value = take_sample(tracker, stat)
        written = publish(output, value)
        tries += 1
        if once and value is not None:
            return 0 if written else 1
        if once and tries >= ONCE_TRIES:
            log(f"no usable interval after {tries} tries; nothing written")
            return 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="b3lb-load", description="Write this node's CPU load for b3lb.")
    parser.add_argument("--stat", default=DEFAULT_STAT, help=f"kernel statistics file ({DEFAULT_STAT})")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"file nginx serves ({DEFAULT_OUTPUT})")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between samples (10)")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="intervals kept for 'long' (6)")
    parser.add_argument("--once", action="store_true", help="write one value (after one interval) and exit")
    args = parser.parse_args(argv)
    if not 0 <= args.interval <= 3600:
        parser.error("--interval must be between 0 and 3600 seconds")
    if not 1 <= args.window <= 1000:
        parser.error("--window must be between 1 and 1000")
    if not Path(args.output).parent.is_dir():
        parser.error(f"--output: folder {Path(args.output).parent} does not exist")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    # systemd stops the service with SIGTERM: leave the loop cleanly instead of a traceback.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return run(args.stat, args.output, args.interval, args.window, args.once, stop)


if __name__ == "__main__":
    sys.exit(main())
