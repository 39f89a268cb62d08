"""Render metrics of this process (prometheus-client's default registry). The queue depth by state
is b3lb.recordings.metrics.RENDER_QUEUE, refreshed by housekeeping and by every worker after a job."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Wall seconds of one profile's render (ffmpeg run), by output format.
RENDER_SECONDS = Histogram(
    "b3lb_render_seconds", "Wall-clock seconds to render one recording profile", ["format"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf")),
)  # fmt: skip
# Recording seconds rendered per wall-clock second (5 = a 10-minute recording in 2 minutes).
REALTIME_FACTOR = Histogram(
    "b3lb_render_realtime_factor", "Recording duration divided by render wall time, per profile", ["format"],
    buckets=(0.5, 1, 2, 3, 5, 8, 12, 20, 40, float("inf")),
)  # fmt: skip
# Jobs ended by this process: rendered, retry (failed, queued again), failed (final), lost (taken
# over, requeued or deleted meanwhile: its result was not kept), released (worker stopped).
JOBS = Counter("b3lb_render_jobs", "Render jobs ended by this process, by outcome", ["outcome"])
RUNNING = Gauge("b3lb_render_running", "Render jobs this process is working on")
