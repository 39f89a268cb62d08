"""Smoke test of the benchmark harness (`python -m benchmarks.run --quick`), so it cannot rot.

Not a performance test: it checks that every scenario ran end to end, served requests and saw
no errors. Figures come from a full run (see benchmarks/README.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# benchmarks/scenarios.py ORDER (the repo root is not on sys.path under pytest)
HTTP_SCENARIOS = [
    "ceiling", "ping", "metrics", "join", "join-1c", "isMeetingRunning", "getMeetingInfo",
    "getMeetings-50", "getMeetings-500", "create-repeat", "create",
]  # fmt: skip


def run_bench(tmp_path: Path, *options: str) -> dict:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out), *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text(encoding="utf-8"))


def assert_clean(rows: list[dict]) -> None:
    for row in rows:
        assert row["requests"] > 0 and row["rps"] > 0, row
        assert row["errors"] == 0, row


def test_quick_benchmark_runs_every_scenario(tmp_path):
    result = run_bench(tmp_path)
    assert [r["scenario"] for r in result["rows"]] == HTTP_SCENARIOS
    assert_clean(result["rows"])
    assert [r["scenario"] for r in result["poll"]] == ["poll", "poll-10k"]
    for row in result["poll"]:
        assert row["errors"] == 0 and row["wall_max_s"] > 0 and row["rss_mb"] > 0, row
    assert result["poll"][1]["owned_with_xml"] == result["poll"][1]["owned_meetings"] > 0
    assert {t["verdict"] for t in result["targets"]} <= {"PASS", "MISS"}


@pytest.mark.skipif(shutil.which("wrk") is None, reason="without wrk the test above uses the built-in generator")
def test_quick_benchmark_builtin_generator(tmp_path):
    result = run_bench(tmp_path, "--no-wrk", "--scenarios", "ceiling,join,getMeetings-50,create")
    assert result["tool"] == "built-in asyncio generator"
    assert [r["scenario"] for r in result["rows"]] == ["ceiling", "join", "getMeetings-50", "create"]
    assert_clean(result["rows"])
