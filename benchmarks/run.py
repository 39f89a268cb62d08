"""`python -m benchmarks.run`: b3lb against the ceiling of its own stack, in one command.

Starts PostgreSQL (DATABASE_URL or embedded), a seeded schema, a fake BBB fleet and one b3lb
server; pre-creates meetings through the API; drives each scenario (warm-up, then a fixed
duration) with wrk or the built-in generator on the other core; prints one table and writes the
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
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import report, wrk
from benchmarks.common import PYTHON, REPO, Child, Cores, free_port, pin_preexec, pinned, rss_mb
from benchmarks.loadgen import LoadResult, LoadSpec
from benchmarks.scenarios import HTTP_SCENARIOS, ORDER, Scenario, build
from benchmarks.stack import ApiStack, Client, Postgres, wait_until

DEFAULT_JSON = REPO / "benchmarks" / "results.json"
QUICK = {"duration": 1.0, "warmup": 0.0, "nodes": 3, "poll_nodes": 50, "poll_meetings": 5, "poll_attendees": 2,
         "rounds": 1}
NORMAL = {"duration": 5.0, "warmup": 1.0, "nodes": 10, "poll_nodes": 1000, "poll_meetings": 20, "poll_attendees": 5,
          "rounds": 3}


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: 1 s per scenario, no warm-up, small fleets")
    parser.add_argument("--duration", type=float, help="seconds per scenario and round (default 5)")
    parser.add_argument(
        "--rounds", type=int, help="rounds of (ceiling, scenario) pairs per scenario; medians are reported (default 3)"
    )
    parser.add_argument("--warmup", type=float, help="warm-up seconds before each scenario (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--nodes", type=int, help="fake nodes behind the server (default 10)")
    parser.add_argument("--poll-nodes", type=int, help="fake nodes of the poll scenario (default 1000)")
    parser.add_argument("--poll-meetings", type=int, help="meetings per node in the poll scenario (default 20)")
    parser.add_argument("--poll-attendees", type=int, help="attendees per meeting in the poll scenario (default 5)")
    parser.add_argument(
        "--poll-interval", type=float, default=10.0, help="server poller interval (default 10 s, as in production)"
    )
    parser.add_argument("--scenarios", default="", help=f"comma-separated subset of: {','.join(ORDER)}")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"result file (default {DEFAULT_JSON})")
    parser.add_argument("--no-wrk", action="store_true", help="use the built-in generator even if wrk is installed")
    parser.add_argument(
        "--fleet-core",
        choices=("server", "generator"),
        default="generator",
        help="core of the fake fleet during the HTTP scenarios (default: the generator's, so the server's core "
        "serves only b3lb, as in production where nodes are other machines)",
    )
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else NORMAL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.selected = [s.strip() for s in args.scenarios.split(",") if s.strip()] or list(ORDER)
    unknown = [s for s in args.selected if s not in ORDER]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    if args.duration <= 0 or args.warmup < 0 or args.connections < 1 or args.nodes < 1:
        parser.error("--duration and --connections, --nodes must be positive, --warmup not negative")
    return args


class Runner:
    """Runs the HTTP scenarios against one stack; keeps the rows."""

    def __init__(self, args: argparse.Namespace, folder: Path, cores: Cores, use_wrk: bool) -> None:
        self.args = args
        self.folder = folder
        self.cores = cores
        self.use_wrk = use_wrk
        self.script = wrk.write_script(folder) if use_wrk else None
        self.rows: list[report.Row] = []
        self.measurements = 0

    def load(self, scenario: Scenario, phase: str, duration: float, port: int) -> LoadResult:
        spec = LoadSpec(
            port=port,
            host=scenario.host,
            paths_file=str(scenario.write_paths(self.folder, phase, duration)),
            connections=scenario.connections,
            duration=duration,
            expect_status=scenario.expect_status,
            contains=scenario.contains,
            excludes=scenario.excludes,
            count_tag=scenario.count_tag,
            count=scenario.count,
            headers=scenario.headers,
        )
        if self.script is not None:
            return wrk.run_wrk(spec, self.script, self.cores.generator)
        spec_file = self.folder / f"spec-{scenario.name}-{phase}.json"
        spec_file.write_text(json.dumps(asdict(spec)), encoding="utf-8")
        command = pinned([PYTHON, "-m", "benchmarks.loadgen", "--spec", str(spec_file)], self.cores.generator)
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=duration + 60,
            cwd=REPO,
            preexec_fn=pin_preexec(self.cores.generator),
        )  # type: ignore[arg-type]
        line = next((x for x in done.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
        if line is None:
            raise RuntimeError(f"load generator failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
        return LoadResult(**json.loads(line[len("BENCHJSON ") :]))

    def run_scenario(self, scenario: Scenario, port: int, pid: int) -> report.Row:
        warmup_errors = 0
        self.measurements += 1  # a phase name per measurement: every round creates new meeting IDs
        if self.args.warmup > 0:
            warmup_errors = self.load(scenario, f"w{self.measurements}", self.args.warmup, port).errors
        result = self.load(scenario, f"m{self.measurements}", self.args.duration, port)
        row: report.Row = {
            "scenario": scenario.name,
            "connections": scenario.connections,
            "tool": result.tool,
            "requests": result.requests,
            "seconds": round(result.seconds, 3),
            "rps": round(result.rps, 1),
            "p50_ms": round(result.p50_ms, 3),
            "p99_ms": round(result.p99_ms, 3),
            "errors": result.errors,
            "transport_errors": result.transport_errors,
            "unexpected": result.unexpected,
            "warmup_errors": warmup_errors,
            "rss_mb": round(rss_mb(pid), 1),
            "pct_ceiling": None,
            "paths": result.paths,
            "wrapped": result.wrapped,
            "examples": result.examples,
        }
        row["wrapped"] = result.wrapped and scenario.distinct
        print(
            f"  {scenario.name:<17} {row['rps']:>9,.0f} req/s  p50 {row['p50_ms']:.2f} ms  p99 "
            f"{row['p99_ms']:.2f} ms  errors {row['errors']}",
            file=sys.stderr,
            flush=True,
        )
        return row

    def start_ceiling(self, scenario: Scenario) -> tuple[Child, int]:
        """The hello-world server, kept up for the whole run (idle while b3lb is measured)."""
        port = free_port()
        command = [PYTHON, "-m", "benchmarks.ceiling", "--port", str(port)]
        child = Child("ceiling", command, self.folder / "ceiling.log", cpus=self.cores.server)
        client = Client(port)
        try:

            def answers() -> tuple[bool, str]:
                status, body = client.get("/", scenario.host)
                return status == 200, f"HTTP {status}"

            wait_until(answers, "the hello-world server", 30, child)
        finally:
            client.close()
        return child, port

    def run_http(self, postgres: Postgres, names: list[str]) -> None:
        args, cores = self.args, self.cores
        fleet_cpus = cores.server if args.fleet_core == "server" else cores.generator
        started = time.monotonic()
        stack = ApiStack(
            postgres,
            self.folder,
            nodes=args.nodes,
            server_cpus=cores.server,
            fleet_cpus=fleet_cpus,
            poll_interval=args.poll_interval,
        )
        try:
            stack.precreate()
            stack.wait_for_poll()
            print(f"set-up done in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
            scenarios = build(stack.secrets, args.connections)
            self._measure(stack, scenarios, names)
        finally:
            stack.stop()

    def _measure(self, stack: ApiStack, scenarios: dict[str, Scenario], names: list[str]) -> None:
        """Each scenario right after a ceiling measurement of the same length, in several rounds:
        this machine's speed drifts by tens of percent within seconds, so the reported % of
        ceiling is the median of neighbour-in-time ratios, and req/s the median round."""
        ceiling_scenario = scenarios["ceiling"]
        child, ceiling_port = self.start_ceiling(ceiling_scenario)
        ceilings: list[report.Row] = []
        try:
            for name in names:
                if scenarios[name].ceiling:
                    continue
                pairs = []
                for _ in range(self.args.rounds):
                    ceiling = self.run_scenario(ceiling_scenario, ceiling_port, child.pid)
                    stack.check_alive(name)
                    pairs.append((ceiling, self.run_scenario(scenarios[name], stack.port, stack.server_pid)))
                ceilings.extend(c for c, _ in pairs)
                self.rows.append(_median_row(pairs))
            if "ceiling" in names and not ceilings:
                ceilings.append(self.run_scenario(ceiling_scenario, ceiling_port, child.pid))
        finally:
            child.stop()
        if ceilings:  # the ceiling row: the median of all its measurements
            ceilings.sort(key=lambda r: r["rps"])
            median = dict(ceilings[len(ceilings) // 2])
            median["pct_ceiling"] = 100.0
            median["ceiling_runs"] = [r["rps"] for r in ceilings]
            self.rows.insert(0, median)


def _median_row(pairs: list[tuple[report.Row, report.Row]]) -> report.Row:
    """The round with the median req/s, its neighbour ceiling, the median ratio, summed errors."""
    ordered = sorted(pairs, key=lambda pair: pair[1]["rps"])
    ceiling, row = ordered[len(ordered) // 2]
    row = dict(row)
    ratios = sorted(r["rps"] / c["rps"] for c, r in pairs if c["rps"])
    row["pct_ceiling"] = round(100.0 * ratios[len(ratios) // 2], 1) if ratios else None
    row["ceiling_rps"], row["ceiling_p99_ms"] = ceiling["rps"], ceiling["p99_ms"]
    row["rounds"] = [{"rps": r["rps"], "ceiling_rps": c["rps"], "p99_ms": r["p99_ms"]} for c, r in pairs]
    for key in ("errors", "transport_errors", "unexpected", "warmup_errors"):
        row[key] = sum(r[key] for _, r in pairs)
    return row


def run_poll(args: argparse.Namespace, postgres: Postgres, folder: Path, cores: Cores) -> list[report.Row]:
    """benchmarks.poll in its own process on the server core; its fleet on the generator core."""
    out = folder / "poll.json"
    command = [
        PYTHON, "-m", "benchmarks.poll", "--nodes", str(args.poll_nodes), "--meetings", str(args.poll_meetings),
        "--attendees", str(args.poll_attendees), "--json", str(out),
    ]  # fmt: skip
    if cores.generator is not None:
        command += ["--fleet-cpus", ",".join(str(c) for c in sorted(cores.generator))]
    env = {**os.environ, "DATABASE_URL": postgres.url}
    print(f"poll: {args.poll_nodes} nodes x {args.poll_meetings} meetings ...", file=sys.stderr, flush=True)
    subprocess.run(
        pinned(command, cores.server), env=env, cwd=REPO, timeout=900, check=True, preexec_fn=pin_preexec(cores.server)
    )  # type: ignore[arg-type]
    rows: list[report.Row] = json.loads(out.read_text(encoding="utf-8"))
    for row in rows:
        print(
            f"  {row['scenario']:<17} wall {row['wall_max_s']:.2f} s  CPU {row['cpu_max_s']:.2f} s  "
            f"RSS {row['rss_mb']:.1f} MB  errors {row['errors']}",
            file=sys.stderr,
            flush=True,
        )
    return rows


def run_recordings(args: argparse.Namespace, postgres: Postgres, folder: Path, cores: Cores) -> list[report.Row]:
    """benchmarks.recordings in its own process on the server core: 1,000 recordings listed."""
    out = folder / "recordings.json"
    command = [PYTHON, "-m", "benchmarks.recordings", "--json", str(out)]
    if args.quick:
        command += ["--noise", "2000", "--iterations", "10", "--warmup", "2"]
    env = {**os.environ, "DATABASE_URL": postgres.url}
    print("getRecordings: 1,000 recordings ...", file=sys.stderr, flush=True)
    done = subprocess.run(
        pinned(command, cores.server), env=env, cwd=REPO, timeout=900, check=True, capture_output=True, text=True,
        preexec_fn=pin_preexec(cores.server),
    )  # type: ignore[arg-type]
    print(done.stdout, file=sys.stderr, flush=True)
    rows: list[report.Row] = json.loads(out.read_text(encoding="utf-8"))
    return rows


def run_render(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """benchmarks.render in its own process, not pinned: ffmpeg may use every core (issue 11.8)."""
    out = folder / "render.json"
    # --quick: the 1-minute recording, without two workers vs one
    command = [PYTHON, "-m", "benchmarks.render", "--json", str(out)] + (["--quick", "--no-pair"] if args.quick else [])
    print("render: the synthetic recording per profile, two workers vs one ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=REPO, timeout=7200, check=True, capture_output=True, text=True)
    print(done.stdout, file=sys.stderr, flush=True)
    document: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return document


def tidy(folder: Path) -> None:
    """Drop the big files of a run (embedded database, request lists); the logs stay."""
    shutil.rmtree(folder / "pgdata", ignore_errors=True)
    for pattern in ("paths-*.txt", "spec-*.json"):
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
    use_wrk = wrk.available() and not args.no_wrk
    folder = Path(tempfile.mkdtemp(prefix="b3lb-bench-"))
    http_names = [n for n in HTTP_SCENARIOS if n in args.selected]
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "tool": f"wrk ({wrk.version()})" if use_wrk else "built-in asyncio generator",
        "pinning": cores.describe(),
        "fleet_core": args.fleet_core,
        "nodes": args.nodes,
        "connections": args.connections,
        "duration": args.duration,
        "warmup": args.warmup,
        "poll_interval": args.poll_interval,
        "quick": args.quick,
        "scenarios": [n for n in ORDER if n in args.selected],
    }
    print(
        f"b3lb benchmark: {', '.join(meta['scenarios'])}; {meta['tool']}; {meta['pinning']}; temp {folder}",
        file=sys.stderr,
        flush=True,
    )
    postgres = Postgres(folder)
    meta["postgres"] = postgres.kind
    runner = Runner(args, folder, cores, use_wrk)
    poll_rows: list[report.Row] = []
    recording_rows: list[report.Row] = []
    render_doc: dict[str, Any] | None = None
    try:
        if http_names:
            runner.run_http(postgres, http_names)
        if "poll" in args.selected:
            poll_rows = run_poll(args, postgres, folder, cores)
        if "getRecordings" in args.selected:
            recording_rows = run_recordings(args, postgres, folder, cores)
        if "render" in args.selected:
            render_doc = run_render(args, folder)
    finally:
        postgres.stop()
        tidy(folder)
    found = report.targets(runner.rows, poll_rows, recording_rows, render_doc)
    print(report.render(meta, runner.rows, poll_rows, found, recording_rows, render_doc))
    report.write_json(args.json, meta, runner.rows, poll_rows, found, recording_rows, render_doc)
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
