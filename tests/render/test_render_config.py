"""[render] of the configuration (b3lb/config.py RenderConfig): defaults and refused values."""

from __future__ import annotations

import pytest
from db_support import REPO

from b3lb.config import ConfigError, RenderConfig, load_config


def test_defaults_and_the_shipped_file() -> None:
    render = load_config(REPO / "conf" / "b3lb.conf", env={}).render
    assert render == RenderConfig()
    assert (render.embedded, render.concurrency, render.threads, render.ffmpeg, render.work_dir) == (True, 1, 0, "", "")
    assert (render.lease_seconds, render.heartbeat_seconds, render.max_attempts, render.backoff_seconds) == (
        60.0, 15.0, 3, 60.0)


def test_environment_overrides(tmp_path) -> None:
    env = {"B3LB_RENDER_EMBEDDED": "false", "B3LB_RENDER_CONCURRENCY": "4", "B3LB_RENDER_THREADS": "2",
           "B3LB_RENDER_FFMPEG": "sh", "B3LB_RENDER_WORK_DIR": str(tmp_path)}  # fmt: skip
    render = load_config(None, env=env).render
    assert (render.embedded, render.concurrency, render.threads, render.ffmpeg, render.work_dir) == (
        False, 4, 2, "sh", str(tmp_path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("concurrency = 0", "render.concurrency: must be between 1 and 64"),
        ("concurrency = 65", "render.concurrency"),
        ("threads = -1", "render.threads"),
        ("lease_seconds = 1.0", "render.lease_seconds"),
        ("heartbeat_seconds = 0.0", "render.heartbeat_seconds"),
        ("heartbeat_seconds = 31.0", "at most half of render.lease_seconds"),
        ("max_attempts = 0", "render.max_attempts"),
        ("backoff_seconds = 0.0", "render.backoff_seconds"),
        ('ffmpeg = "/no/such/ffmpeg"', "render.ffmpeg: '/no/such/ffmpeg' is not an executable"),
        ('ffmpeg = "no-such-program-b3lb"', "render.ffmpeg"),
        ("max_archive_bytes = 1000", "render.max_archive_bytes"),
        ("max_archive_files = 1", "max_archive_files"),
        ('concurrency = "two"', "render.concurrency: expected int"),
        ('embedded = "yes"', "render.embedded: expected bool"),
        ("workers = 2", "unknown setting render.workers"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "b3lb.conf"
    path.write_text(f"[render]\n{text}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert message in str(error.value)
