"""This process's recording metrics (prometheus-client's default registry, scraped with the global view)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

UPLOADS = Counter("b3lb_recording_uploads", "Recording uploads from nodes by result", ["result"])
UPLOAD_BYTES = Counter("b3lb_recording_upload_bytes", "Bytes of recording archives stored from node uploads")
STORED_BYTES = Gauge("b3lb_recording_stored_bytes", "Bytes of archives and videos in recording storage",
                     ["kind"])
CALLBACKS = Counter("b3lb_recording_callbacks", "Recording-ready callbacks to frontends by result", ["result"])
OUTBOX_DEPTH = Gauge("b3lb_recording_callback_outbox", "Recording-ready callbacks waiting to be delivered")
RENDER_QUEUE = Gauge("b3lb_recording_render_jobs", "Render jobs by state", ["state"])
RETENTION_DELETED = Counter("b3lb_recording_sets_deleted", "Record sets deleted by housekeeping")
