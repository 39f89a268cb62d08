"""The two scenarios that are more than one load run: `scale` and `workers` (benchmarks/README.md).

scale: 100 fake nodes with 1,000 meetings each (10 % of them changed by every getMeetings), all
100,000 mapped to b3lb meetings with one INSERT ... SELECT before the server starts; joins and
creates then run at the same time (two generator processes, half the connections each) while the
poller runs at its interval; then every meeting ends (POST /fleet/end-all) and after two poll
cycles and a margin the server's RSS is read again.

workers: `b3lb serve --workers 1` and then `--workers 2` under join load; joins per CPU-second of
the server (supervisor and every worker, utime + stime from /proc) for each, and their ratio.
"""

from __future__ import annotations

import sys
import time

from benchmarks import lag
from benchmarks.common import cpu_seconds, descendants, peak_rss_mb, rss_mb
from benchmarks.loadgen import LoadResult
from benchmarks.measure import Row, Runner, result_row, unavailable_row
from benchmarks.scenarios import build
from benchmarks.stack import (
    ApiStack,
    FleetOptions,
    Postgres,
    StackSpec,
    Unsupported,
    fleet_supports,
    run_async,
)

END_ALL_MARGIN = 5.0  # seconds beyond two poll cycles before the RSS after end-all is read


def run_special(runner: Runner, postgres: Postgres, name: str) -> list[Row]:
    try:
        return run_scale(runner, postgres) if name == "scale" else run_workers(runner, postgres)
    except Unsupported as exc:
        print(f"  n/a: {exc}", file=sys.stderr, flush=True)
        return [unavailable_row(name, name, str(exc), failed=False)]
    except Exception as exc:  # noqa: BLE001 - reported as a failed scenario; the others still run
        print(f"  FAILED: {exc!r}", file=sys.stderr, flush=True)
        return [unavailable_row(name, name, repr(exc), failed=True)]


def _scale_spec(runner: Runner) -> tuple[StackSpec, list[str]]:
    args, cores = runner.args, runner.cores
    notes = []
    churn = args.scale_churn
    if churn and not fleet_supports("--churn"):
        notes.append("the fake fleet has no --churn yet: its meetings never change")
        churn = 0.0
    spec = StackSpec(
        "scale", nodes=args.scale_nodes, poll_interval=args.poll_interval, fleet=FleetOptions(churn=churn),
        fleet_meetings=args.scale_meetings, fleet_attendees=args.scale_attendees,
        tenants=("JOIN", "CREATE", "SCALE"), precreated={"JOIN": 100}, own_fleet_meetings="SCALE",
        server_cpus=cores.server, fleet_cpus=cores.generator,
    )  # fmt: skip
    if args.quick:  # meetings unseen for longer than the grace are dropped: 15 s would outlast the quick wait
        spec.env["B3LB_POLLER_MEETING_GRACE"] = str(args.poll_interval)
    return spec, notes


def run_scale(runner: Runner, postgres: Postgres) -> list[Row]:
    args = runner.args
    spec, notes = _scale_spec(runner)
    print(f"stack scale: {spec.nodes} nodes x {spec.fleet_meetings} meetings {' '.join(spec.fleet.arguments())}",
          file=sys.stderr, flush=True)  # fmt: skip
    started = time.monotonic()
    stack = ApiStack(postgres, runner.folder, spec)
    try:
        stack.precreate()
        targets = stack.write_join_targets()
        print(f"  set-up done in {time.monotonic() - started:.1f}s ({stack.owned:,} meetings routed)",
              file=sys.stderr, flush=True)  # fmt: skip
        scenarios = build("scale", stack.secrets, max(1, args.connections // 2))
        before = stack.lag.read()
        specs = [runner.spec(scenarios["join"], stack.port, args.duration, args.warmup, targets),
                 runner.spec(scenarios["create"], stack.port, args.duration, args.warmup, None)]  # fmt: skip
        processes = [runner.start_load([s]) for s in specs]  # at the same time, both on the generator core
        joins, creates = (runner.finish_load(p, [s])[0] for p, s in zip(processes, specs, strict=True))
        after = stack.lag.read()
        row = _scale_row(joins, creates, args.connections)
        row.update(stack="scale", owned_meetings=stack.owned, rss_mb=round(rss_mb(stack.server_pid), 1),
                   peak_rss_mb=round(peak_rss_mb(stack.server_pid), 1), notes=notes,
                   **lag.summary(lag.delta(before, after)))  # fmt: skip
        runner.progress(row)
        return [row, _after_end_all(stack, after, args.poll_interval, 2.0 if args.quick else END_ALL_MARGIN)]
    finally:
        stack.stop()


def _scale_row(joins: LoadResult, creates: LoadResult, connections: int) -> Row:
    """One row for both generators: req/s summed, latencies of the joins, errors of both."""
    row = result_row("scale", joins, connections)
    create_row = result_row("scale-create", creates, connections // 2)
    row["rps"] = round(joins.rps + creates.rps, 1)
    row["join_rps"], row["join_p99_ms"] = round(joins.rps, 1), round(joins.p99_ms, 3)
    row["create_rps"], row["create_p99_ms"] = round(creates.rps, 1), round(creates.p99_ms, 3)
    row["create_per_second"] = creates.per_second
    for key in ("errors", "transport_errors", "unexpected", "warmup_errors", "requests", "answers"):
        row[key] += create_row[key]
    row["examples"] = (row["examples"] + create_row["examples"])[:5]
    return row


def _after_end_all(stack: ApiStack, histogram: lag.Histogram | None, interval: float, margin: float) -> Row:
    """Every meeting ends; RSS and lag after two poll cycles and a margin."""
    row: Row = {"scenario": "scale-end-all", "stack": "scale", "connections": "-", "errors": 0, "examples": []}
    status, body = stack.end_all()
    if status == 404:
        row["status"] = "n/a: the fake fleet has no POST /fleet/end-all yet"
        return row
    if status >= 300:
        row.update(errors=1, examples=[f"POST /fleet/end-all: HTTP {status} {body!r}"])
        return row
    wait = 2 * interval + margin
    print(f"  all meetings ended; waiting {wait:.0f}s (two poll cycles + {margin:.0f}s)",
          file=sys.stderr, flush=True)  # fmt: skip
    time.sleep(wait)
    stack.check_alive("the RSS after end-all")
    later = stack.lag.read()
    left = run_async(_meetings_left(stack.db_url))
    row.update(rss_mb=round(rss_mb(stack.server_pid), 1), peak_rss_mb=round(peak_rss_mb(stack.server_pid), 1),
               waited_s=wait, meetings_left=left, **lag.summary(lag.delta(histogram, later)))  # fmt: skip
    print(f"  scale-end-all: RSS {row['rss_mb']} MB, {left} meetings left, lag p99/max "
          f"{lag.shown(row.get('lag_p99_ms'))}/{lag.shown(row.get('lag_max_ms'))} ms", file=sys.stderr, flush=True)
    return row


async def _meetings_left(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM meeting"))
    finally:
        await conn.close()


def _server_pids(stack: ApiStack) -> list[int]:
    return [stack.server_pid, *descendants(stack.server_pid)]


def run_workers(runner: Runner, postgres: Postgres) -> list[Row]:
    """Joins per server CPU-second with 1 and with 2 workers. The server processes are not pinned
    (the workers of N=2 need both cores); the generator and the fleet stay on the second core."""
    args, rows = runner.args, []
    for workers in (1, 2):
        spec = StackSpec(f"workers-{workers}", nodes=args.nodes, poll_interval=args.poll_interval, workers=workers,
                         tenants=("JOIN", "CREATE"), precreated={"JOIN": 100}, server_cpus=None,
                         fleet_cpus=runner.cores.generator)  # fmt: skip
        print(f"stack workers-{workers}: b3lb serve --workers {workers}", file=sys.stderr, flush=True)
        stack = ApiStack(postgres, runner.folder, spec)
        try:
            stack.precreate()
            targets = stack.write_join_targets()
            scenario = build("workers", stack.secrets, args.connections)["join"]
            load = runner.spec(scenario, stack.port, args.duration, args.warmup, targets)
            pids = _server_pids(stack)
            cpu_before = {pid: cpu_seconds(pid) for pid in pids}
            result = runner.load([load])[0]
            seen = _server_pids(stack)
            cpu = sum(cpu_seconds(pid) - cpu_before.get(pid, 0.0) for pid in seen)
            row = result_row(f"workers-{workers}", result, scenario.connections)
            good = result.answers - result.errors  # every checked answer, warm-up included, as the CPU window
            row.update(stack=spec.name, workers=workers, processes=len(seen), restarted=sorted(set(pids) ^ set(seen)),
                       server_cpu_s=round(cpu, 3), good_answers=good,
                       joins_per_cpu_s=round(good / cpu, 1) if cpu > 0 else None,
                       rss_mb=round(sum(rss_mb(pid) for pid in seen), 1))  # fmt: skip
            if len(seen) < workers + (1 if workers > 1 else 0):
                row["errors"] += 1
                row["examples"].append(f"expected {workers} worker processes, found pids {seen}")
            runner.progress(row)
            rows.append(row)
        finally:
            stack.stop()
    one, two = (r.get("joins_per_cpu_s") for r in rows)
    rows[-1]["efficiency_vs_1"] = round(two / one, 3) if one and two else None
    return rows
