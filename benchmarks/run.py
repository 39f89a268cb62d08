"""`python -m benchmarks.run`: b3lb against two hello-world yardsticks, in one command.

Starts PostgreSQL (DATABASE_URL or embedded) and, stack after stack, a seeded schema, a fake BBB
fleet (plain HTTP, TLS, TLS with chunked gzip answers, large and changing) and a b3lb server;
pre-creates meetings through the API; drives each scenario right after both yardsticks with the
built-in generator on the other core; prints one table with the issue's targets and writes the
same rows as JSON. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.common import PYTHON, REPO, Cores, pin_preexec, pinned
from benchmarks.measure import Runner
from benchmarks.scenarios import HTTP_SCENARIOS, ORDER, OTHER_SCENARIOS, QUICK_SCENARIOS
from benchmarks.special import run_special
from benchmarks.stack import Postgres

DEFAULT_JSON = REPO / "benchmarks" / "results.json"
# --quick: every code path at tiny sizes (the smoke test of tests/test_benchmarks.py).
QUICK = {"duration": 0.6, "warmup": 0.25, "yardstick_seconds": 0.25, "nodes": 3, "poll_interval": 0.5,
         "poll_nodes": 50, "poll_meetings": 5, "poll_attendees": 2, "scale_nodes": 4, "scale_meetings": 50,
         "metrics_tenants": 5, "metrics_secrets": 3, "metrics_nodes": 3}
NORMAL = {"duration": 20.0, "warmup": 2.0, "yardstick_seconds": 5.0, "nodes": 10, "poll_interval": 10.0,
          "poll_nodes": 1000, "poll_meetings": 20, "poll_attendees": 5, "scale_nodes": 100, "scale_meetings": 1000,
          "metrics_tenants": 100, "metrics_secrets": 10, "metrics_nodes": 50}  # fmt: skip


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true",
        help=f"smoke mode: about a second per scenario, tiny fleets; unless --scenarios: {','.join(QUICK_SCENARIOS)}")
    add("--duration", type=float, help="measured seconds per scenario (default 20)")
    add("--warmup", type=float, help="checked warm-up seconds before each measurement (default 2)")
    add("--yardstick-seconds", type=float, help="seconds of each yardstick before each scenario (default 5)")
    add("--connections", type=int, default=32, help="concurrent connections (default 32)")
    add("--nodes", type=int, help="fake nodes behind the server (default 10)")
    add("--poll-interval", type=float, help="the server's poller interval (default 10 s, as in production)")
    add("--poll-nodes", type=int, help="fake nodes of the poll scenario (default 1000)")
    add("--poll-meetings", type=int, help="meetings per node in the poll scenario (default 20)")
    add("--poll-attendees", type=int, help="attendees per meeting in the poll scenario (default 5)")
    add("--scale-nodes", type=int, help="fake nodes of the scale scenario (default 100)")
    add("--scale-meetings", type=int, help="routed meetings per node in the scale scenario (default 1000)")
    add("--scale-attendees", type=int, default=2, help="attendees per meeting in the scale scenario (default 2)")
    add("--scale-churn", type=float, default=0.1, help="share of meetings each getMeetings changes (default 0.1)")
    add("--metrics-tenants", type=int, help="tenants of the metrics scenario (default 100)")
    add("--metrics-secrets", type=int, help="secrets per tenant in the metrics scenario (default 10)")
    add("--metrics-nodes", type=int, help="fake nodes of the metrics scenario (default 50)")
    add("--scenarios", default="", help=f"comma-separated subset of: {','.join(ORDER)}")
    add("--json", type=Path, default=DEFAULT_JSON, help=f"result file (default {DEFAULT_JSON})")
    add("--fleet-core", choices=("server", "generator"), default="generator",
        help="core of the fake fleet during the HTTP scenarios (default: the generator's, so the server's core "
             "serves only b3lb, as in production where nodes are other machines)")  # fmt: skip
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else NORMAL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    default = QUICK_SCENARIOS if args.quick else ORDER
    args.selected = [s.strip() for s in args.scenarios.split(",") if s.strip()] or list(default)
    unknown = [s for s in args.selected if s not in ORDER]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    if args.duration <= 0 or args.yardstick_seconds <= 0 or args.warmup < 0 or args.connections < 2 or args.nodes < 1:
        parser.error("--duration, --yardstick-seconds, --nodes must be positive, --connections at least 2, "
                     "--warmup not negative")  # fmt: skip
    return args


def _failed(name: str, done: subprocess.CompletedProcess[str] | None, why: str = "") -> list[report.Row]:
    """A part that broke: one row with an error and the last line of its output."""
    text = why or (((done.stderr or "") + (done.stdout or "")) if done is not None else "")
    tail = text[-1500:].strip()
    print(f"  {name} FAILED:\n{tail}", file=sys.stderr, flush=True)
    return [{"scenario": name, "status": "failed", "errors": 1, "examples": [tail.splitlines()[-1] if tail else "?"]}]


@dataclass
class Part:
    """A sub-benchmark in its own process that writes its results as JSON to `out`."""

    name: str
    process: subprocess.Popen[str]
    out: Path
    timeout: float


def start_part(args: argparse.Namespace, name: str, postgres: Postgres, folder: Path, cores: Cores) -> Part:
    """poll and getRecordings on the server core (the poll fleet on the other one); render not pinned:
    ffmpeg may use every core (issue 11.8)."""
    out = folder / f"{name}.json"
    cpus, timeout = cores.server, 1200.0
    if name == "poll":
        command = [
            PYTHON, "-m", "benchmarks.poll", "--nodes", str(args.poll_nodes), "--meetings", str(args.poll_meetings),
            "--attendees", str(args.poll_attendees), "--json", str(out),
        ]  # fmt: skip
        if cores.generator is not None:
            command += ["--fleet-cpus", ",".join(str(c) for c in sorted(cores.generator))]
        print(f"poll: {args.poll_nodes} nodes x {args.poll_meetings} meetings ...", file=sys.stderr, flush=True)
    elif name == "getRecordings":
        command = [PYTHON, "-m", "benchmarks.recordings", "--json", str(out)]
        command += ["--noise", "2000", "--iterations", "10", "--warmup", "2"] if args.quick else []
        print("getRecordings: 1,000 recordings ...", file=sys.stderr, flush=True)
    else:  # --quick: the 1-minute recording, without two workers vs one
        command = [PYTHON, "-m", "benchmarks.render", "--json", str(out)]
        command += ["--quick", "--no-pair"] if args.quick else []
        cpus, timeout = None, 7200.0
        print("render: the synthetic recording per profile, two workers vs one ...", file=sys.stderr, flush=True)
    # output to files, not pipes: a part running in the background could fill a pipe nobody reads yet
    with open(folder / f"{name}.stdout", "w") as stdout, open(folder / f"{name}.stderr", "w") as stderr:
        process = subprocess.Popen(
            pinned(command, cpus), env={**os.environ, "DATABASE_URL": postgres.url}, cwd=REPO, stdout=stdout,
            stderr=stderr, text=True, preexec_fn=pin_preexec(cpus),  # type: ignore[arg-type]
        )  # fmt: skip
    return Part(name, process, out, timeout)


def finish_part(part: Part) -> Any:
    """The part's JSON document, or one failed row (a dict with "failed" for render)."""
    try:
        part.process.wait(timeout=part.timeout)
    except subprocess.TimeoutExpired:
        part.process.kill()
        part.process.wait()
    stdout, stderr = (part.out.with_suffix(suffix).read_text(errors="replace") for suffix in (".stdout", ".stderr"))
    done = subprocess.CompletedProcess(part.process.args, part.process.returncode, stdout, stderr)
    document: Any = None
    if done.returncode == 0 and part.out.is_file():
        try:
            document = json.loads(part.out.read_text(encoding="utf-8"))
        except ValueError as exc:
            done.stderr += f"\nunreadable {part.out}: {exc}"
    if document is None:
        rows = _failed(part.name, done)
        return {"failed": rows[0]["examples"][0], "targets": [], "errors": 1} if part.name == "render" else rows
    if part.name == "poll":
        document = [r for r in document if isinstance(r, dict)]  # benchmarks/poll.py's rows, read defensively
        for row in document:
            print(f"  {row.get('scenario', '?'):<17} wall {report.num(row.get('wall_max_s'))} s  CPU "
                  f"{report.num(row.get('cpu_max_s'))} s  RSS {report.num(row.get('rss_mb'), 1)} MB  peak "
                  f"{report.num(row.get('peak_rss_mb'), 1)} MB  errors {row.get('errors', '?')}",
                  file=sys.stderr, flush=True)  # fmt: skip
    else:
        print(done.stdout, file=sys.stderr, flush=True)
    return document


def tidy(folder: Path) -> None:
    """Drop the big files of a run (embedded database, request lists); the logs stay."""
    shutil.rmtree(folder / "pgdata", ignore_errors=True)
    for pattern in ("paths-*.txt", "spec-*.json", "join-targets-*.json"):
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # pgserver on hosts without it
    args = parse_arguments(argv)
    cores = Cores.detect()
    folder = Path(tempfile.mkdtemp(prefix="b3lb-bench-"))
    started = time.monotonic()
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "tool": "built-in asyncio generator (benchmarks/loadgen.py)",
        "pinning": cores.describe(),
        "fleet_core": args.fleet_core,
        "nodes": args.nodes,
        "connections": args.connections,
        "duration": args.duration,
        "warmup": args.warmup,
        "yardstick_seconds": args.yardstick_seconds,
        "poll_interval": args.poll_interval,
        "quick": args.quick,
        "scenarios": [n for n in ORDER if n in args.selected],
    }
    print(f"b3lb benchmark: {', '.join(meta['scenarios'])}; {meta['pinning']}; temp {folder}",
          file=sys.stderr, flush=True)  # fmt: skip
    postgres = Postgres(folder)
    meta["postgres"] = postgres.kind
    runner = Runner(args, folder, cores)
    poll_rows: list[report.Row] = []
    recording_rows: list[report.Row] = []
    render_doc: dict[str, Any] | None = None
    # --quick runs poll, getRecordings and render beside the HTTP part (their figures mean nothing there):
    # the smoke stays short. A full run measures one thing at a time.
    parts = [n for n in OTHER_SCENARIOS if n in args.selected]
    background = {n: start_part(args, n, postgres, folder, cores) for n in parts} if args.quick else {}
    try:
        if any(n in args.selected for n in HTTP_SCENARIOS):
            runner.run(postgres, args.selected, run_special)
        for name in parts:
            document = finish_part(background.pop(name, None) or start_part(args, name, postgres, folder, cores))
            if name == "poll":
                poll_rows = document
            elif name == "getRecordings":
                recording_rows = document
            else:
                render_doc = document
    finally:
        for part in background.values():  # an earlier step failed
            part.process.kill()
            part.process.wait()
        postgres.stop()
        tidy(folder)
    meta["total_minutes"] = round((time.monotonic() - started) / 60, 1)
    rows = runner.yardstick_rows() + runner.rows
    found = report.targets(rows, poll_rows, recording_rows, render_doc)
    print(report.render(meta, rows, poll_rows, found, recording_rows, render_doc))
    report.write_json(args.json, meta, rows, poll_rows, found, recording_rows, render_doc)
    print(f"\nwrote {args.json} ({meta['total_minutes']} minutes)", file=sys.stderr)
    broken = [r["scenario"] for r in rows + poll_rows + recording_rows if str(r.get("status", "")).startswith("failed")]
    if broken or (render_doc or {}).get("failed"):
        print(f"could not measure: {', '.join(broken) or 'render'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
