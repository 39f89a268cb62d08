"""The event-loop lag probe: a blocked loop shows in the histogram, which `b3lb serve` exports."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import uvloop
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from tests_support import free_port

from b3lb.looplag import LAG_BUCKETS, probe

ADMIN_TOKEN = "admin-" + "5e" * 16
# The buckets agreed with the benchmarks, which report p99 and max as these upper bounds.
AGREED = ("0.0005", "0.001", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0",
          "+Inf")


def test_a_blocked_loop_lands_in_a_high_bucket():
    registry = CollectorRegistry()
    histogram = Histogram("lag_test_seconds", "test", buckets=LAG_BUCKETS, registry=registry)

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(probe(histogram))
        await asyncio.sleep(0.1)  # a few undisturbed probes
        time.sleep(0.2)  # the loop is blocked: the sleeping probe is due but cannot run
        await asyncio.sleep(0.1)
        task.cancel()

    uvloop.run(scenario())
    total = registry.get_sample_value("lag_test_seconds_count")
    up_to_100ms = registry.get_sample_value("lag_test_seconds_bucket", {"le": "0.1"})
    assert total is not None and up_to_100ms is not None
    assert total >= 3  # it kept observing before and after
    assert total - up_to_100ms >= 1  # the 0.2 s stall, as at least one observation above 0.1 s


def _get(url: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_serve_exports_the_lag_histogram(db_url, tmp_path):
    port = free_port()
    env = dict(os.environ, DATABASE_URL=db_url, B3LB_SERVER_PORT=str(port), B3LB_SERVER_DATA_DIR=str(tmp_path),
               B3LB_CONFIG=os.devnull, B3LB_METRICS_ADMIN_TOKEN=ADMIN_TOKEN, B3LB_RENDER_EMBEDDED="false")
    env.pop("REDIS_URL", None)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([sys.executable, "-m", "b3lb.admin.cli", "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            try:
                status, text = _get(f"http://127.0.0.1:{port}/b3lb/metrics", {"Authorization": ADMIN_TOKEN})
            except OSError:
                time.sleep(0.1)
                continue
            assert status == 200
            lag = {f.name: f for f in text_string_to_metric_families(text)}.get("b3lb_event_loop_lag_seconds")
            assert lag is not None and lag.type == "histogram"
            buckets = [s for s in lag.samples if s.name.endswith("_bucket")]
            assert tuple(s.labels["le"] for s in buckets) == AGREED
            if buckets[-1].value > 0:  # the probe has been observing
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no lag observations: {text[-500:]}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
