"""Event-loop lag of the server under test, from its Prometheus histogram.

The server exports `b3lb_event_loop_lag_seconds` (a probe coroutine's oversleep, no labels) in the
process part of the global `/b3lb/metrics` view. The harness scrapes it before and after a
scenario and takes the difference of the cumulative bucket counts, so the figures are that
scenario's alone. The server serves the process part of that page from a cache for about a second
and, once it is older, keeps serving it while a fresh one renders (b3lb/metrics_cache.py), so a
scrape right after a scenario could return an older page: `Scraper.read` asks once, 0.2 s later
again, and then until the histogram has moved on from the one it saw last. p99 and max are reported as bucket upper
bounds ("<= 2 ms"), which is exactly what a target on a bucket boundary can judge. Without the
histogram every figure is None ("n/a").
"""

from __future__ import annotations

import http.client
import math
import re
import time

from benchmarks.common import LOOPBACK

FAMILY = "b3lb_event_loop_lag_seconds"
_BUCKET = re.compile(rb'^' + FAMILY.encode() + rb'_bucket\{le="([^"]+)"\} ([0-9.eE+-]+)\s*$', re.M)

Histogram = dict[float, float]  # upper bound (seconds, inf for +Inf) -> cumulative count


def parse(text: bytes) -> Histogram | None:
    """The cumulative buckets of the lag histogram in a metrics page, None when it has none."""
    buckets = {_bound(m.group(1)): float(m.group(2)) for m in _BUCKET.finditer(text)}
    return buckets or None


def _bound(text: bytes) -> float:
    return math.inf if text in (b"+Inf", b"Inf", b"inf") else float(text)


def scrape(port: int, host: str, token: str, timeout: float = 30.0) -> Histogram | None:
    """The server's lag histogram now (None when it does not export one or does not answer)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", "/b3lb/metrics", headers={"Host": host, "Authorization": token})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    return parse(body) if response.status == 200 else None


class Scraper:
    """Fresh reads of one server's lag histogram (see the module docstring)."""

    def __init__(self, port: int, host: str, token: str) -> None:
        self.port, self.host, self.token = port, host, token
        self.last: Histogram | None = None

    def read(self, patience: float = 3.0) -> Histogram | None:
        deadline = time.monotonic() + patience
        scrape(self.port, self.host, self.token)  # a page older than a second: this starts its successor
        time.sleep(0.2)
        found = scrape(self.port, self.host, self.token)
        while found is not None and self.last is not None and _total(found) <= _total(self.last):
            if time.monotonic() > deadline:
                return None  # no fresh figures: n/a rather than a window that is not the scenario's
            time.sleep(0.1)
            found = scrape(self.port, self.host, self.token)
        self.last = found
        return found


def _total(histogram: Histogram) -> float:
    return histogram.get(math.inf, max(histogram.values(), default=0.0))


def delta(before: Histogram | None, after: Histogram | None) -> Histogram | None:
    if before is None or after is None:
        return None
    return {bound: after[bound] - before.get(bound, 0.0) for bound in after}


def summary(window: Histogram | None) -> dict[str, float | int | None]:
    """samples, p99 and max as bucket upper bounds in ms (inf when beyond the last finite bucket)."""
    if window is None:
        return {"lag_samples": None, "lag_p99_ms": None, "lag_max_ms": None}
    bounds = sorted(window)
    total = window[bounds[-1]]
    if total <= 0:
        return {"lag_samples": 0, "lag_p99_ms": None, "lag_max_ms": None}
    p99 = next(b for b in bounds if window[b] >= 0.99 * total)
    worst = next(b for b in bounds if window[b] >= total)
    return {"lag_samples": int(total), "lag_p99_ms": 1000.0 * p99, "lag_max_ms": 1000.0 * worst}


def shown(value: float | None) -> str:
    """A bound for the table: "<=2", ">5000" (the +Inf bucket), "n/a"."""
    if value is None:
        return "n/a"
    if math.isinf(value):
        return ">5000"
    return f"<={value:g}"
