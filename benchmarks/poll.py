"""The poll scenarios: poll cycles over a large, changing fake fleet, measured in b3lb's own process.

Runs as its own process (`python -m benchmarks.poll ...`, started by benchmarks.run on the server
core). The fleet is another process, pinned to the other core (`--fleet-cpus`). Each variant runs
in a fresh child process of this one (same core), so its RSS and peak RSS are its own and not what
an earlier variant left behind. CPU seconds (time.process_time) are that child's: poller, refresh
tasks, asyncpg and the HTTP client; PostgreSQL's own CPU is not included.

Every variant is honest about what a running `b3lb serve` does:
- the fleet runs with `--churn` (default 0.1): each getMeetings first changes 10 % of the node's
  meetings (an attendee joins or leaves) and ends 1 % of the fleet's own meetings, starting as many
  new ones, so every cycle finds changed documents, ended and new meetings;
- the runtime is started as `b3lb serve` starts it (`runtime.start()`: its directory, meeting and
  counter refresh tasks run during the whole measurement and their CPU counts), the pool is the
  serving pool (`Database.open(serving=True)`), and the garbage collector is tuned as serve does;
- every cycle counts, the first one included (it opens the connections, does the TLS handshakes and
  writes every node's meetings for the first time);
- cycles start `--interval` seconds apart, by default the configured `poller.interval` (10 s), so the
  refresh tasks (every `api.cache_refresh_interval`, 5 s) run between cycles as in production and
  meetings the fleet ended leave b3lb's table within the run (after `poller.meeting_grace`, 15 s:
  back-to-back cycles would never take that path). Small smoke runs (under 5,000 fleet meetings, e.g.
  benchmarks.run --quick) run back to back unless `--interval` is given. `cpu_s[i]` is the process's
  CPU from the start of cycle i to the start of the next (the pause and its refreshes included),
  `poll_cpu_s[i]` what the poller measured for the cycle itself;
- `rss_mb` is VmRSS after the last cycle (after a full collection), `peak_rss_mb` VmHWM from the moment
  the runtime starts (reset through /proc/self/clear_refs after the database is seeded);
- `lag_max_ms` / `lag_p99_ms`: oversleep of a probe coroutine sleeping 20 ms during the cycles;
- `fleet_cpu_s[i]`: the fleet process's CPU during cycle i (one core stands in for 1,000 machines: when
  it nears the cycle's wall time, the fleet, not b3lb, set the pace).

Variants (rows):
- `poll`: plain HTTP nodes, no meeting belongs to b3lb (node loads and counts, the fleet's changes);
- `poll-tls`: the same against TLS nodes (registered https, the fleet's CA as `api.node_ca_file`);
- `poll-10k`: TLS nodes, and `--owned` (10,000) of the fleet's meetings mapped to b3lb meetings with one
  INSERT ... SELECT, so the poller also follows their samples and XML. Churn ends some of them as it
  ends any meeting the fleet made (about 1 % per cycle); `owned_meetings` is the count at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import uvloop

from b3lb.config import Config, load_config
from b3lb.db import Database
from b3lb.memory import tune_garbage_collector
from b3lb.poller import Poller
from b3lb.runtime import Runtime
from b3lb.testing.fakebbb import node_domain
from benchmarks.common import PYTHON, REPO, peak_rss_mb, rss_mb
from benchmarks.stack import FleetInfo, FleetOptions, Postgres, own_fleet_meetings, seed_database, start_fleet

OWNED_MEETINGS = 10_000
SMOKE_MEETINGS = 5_000  # fewer fleet meetings than this: a smoke run, cycles back to back by default
VARIANTS = ("poll", "poll-tls", "poll-10k")
DB_URL_ENV = "B3LB_BENCH_POLL_DB_URL"  # the child's schema (not on its command line)
LAG_PROBE_SECONDS = 0.02
CONFIG_BASE = load_config(REPO / "conf" / "b3lb.conf", env={})  # the shipped defaults, no environment


# --- the parent: fleets, schemas, one child per variant -----------------------------------------


def fleet_options(args: argparse.Namespace, tls_dir: Path | None) -> FleetOptions:
    return FleetOptions(tls_dir=tls_dir, chunked=args.chunked, gzip=args.gzip, churn=args.churn)


def run_variant(args: argparse.Namespace, postgres: Postgres, folder: Path, variant: str, info: FleetInfo,
                fleet_pid: int, ca_file: Path | None) -> dict[str, Any]:
    """One variant in a fresh process (this one's core), on a fresh schema."""
    out = folder / f"{variant}.json"
    command = [
        PYTHON, "-m", "benchmarks.poll", "--variant", variant, "--json", str(out),
        "--nodes", str(args.nodes), "--meetings", str(args.meetings), "--attendees", str(args.attendees),
        "--cycles", str(args.cycles), "--interval", str(args.interval), "--owned", str(args.owned),
        "--fleet-port", str(info.port), "--fleet-secret", info.secret, "--fleet-pid", str(fleet_pid),
        *(["--ca-file", str(ca_file)] if ca_file is not None else []),
    ]  # fmt: skip
    env = {**os.environ, DB_URL_ENV: postgres.new_schema("benchpoll")}
    started = time.monotonic()
    subprocess.run(command, env=env, cwd=REPO, timeout=900, check=True)
    row: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    row["run_s"] = round(time.monotonic() - started, 2)
    return row


def orchestrate(args: argparse.Namespace) -> list[dict[str, Any]]:
    folder = Path(tempfile.mkdtemp(prefix="b3lb-bench-poll-"))
    postgres = Postgres(folder)  # DATABASE_URL from benchmarks.run (its embedded server)
    rows: list[dict[str, Any]] = []
    try:
        for tls in (False, True):
            # poll-10k first on the TLS fleet: the meetings it maps (the populated ones) all still exist
            variants = sorted((v for v in args.variant_list if (v != "poll") is tls), key=lambda v: v != "poll-10k")
            if not variants:
                continue
            started = time.monotonic()
            tls_dir = folder / "tls" if tls else None
            fleet, info = start_fleet(args.nodes, folder, args.fleet_cpu_set, meetings=args.meetings,
                                      attendees=args.attendees, options=fleet_options(args, tls_dir),
                                      name="tls-fleet" if tls else "fleet")
            if info.domains != [node_domain(i) for i in range(args.nodes)]:
                fleet.stop()
                raise RuntimeError("the fleet's node addresses are not node_domain(0..n-1)")
            fleet_start_s = round(time.monotonic() - started, 2)
            try:
                for variant in variants:
                    ca_file = Path(info.ca_file) if info.ca_file else None
                    rows.append({**run_variant(args, postgres, folder, variant, info, fleet.pid, ca_file),
                                 "fleet_start_s": fleet_start_s})
                    if not fleet.alive():
                        raise RuntimeError(f"the fleet exited during {variant}\n{fleet.log_tail()}")
            finally:
                fleet.stop()
    finally:
        postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return sorted(rows, key=lambda row: VARIANTS.index(row["scenario"]))


# --- the child: one variant -------------------------------------------------------------------


class LagProbe:
    """Oversleep of a coroutine sleeping LAG_PROBE_SECONDS: how long the loop was kept from it."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:  # perf_counter: uvloop's loop.time() has millisecond steps
            before = time.perf_counter()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            self.samples.append(max(time.perf_counter() - before - LAG_PROBE_SECONDS, 0.0))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> dict[str, float]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        ordered = sorted(self.samples) or [0.0]
        p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
        return {"lag_p99_ms": round(p99 * 1000, 2), "lag_max_ms": round(ordered[-1] * 1000, 2)}


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of another process, from /proc; 0.0 when unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss() -> bool:
    """Restart VmHWM at the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


async def _cycles(poller: Poller, cycles: int, interval: float, fleet_pid: int) -> dict[str, Any]:
    """`cycles` poll cycles; the fleet's CPU per cycle shows whether the fleet, not b3lb, set the pace."""
    walls: list[float] = []
    fleet_cpus: list[float] = []
    cpus: list[float] = []
    poll_cpus: list[float] = []
    failed: list[str] = []
    nodes = 0
    probe = LagProbe()
    probe.start()
    for _ in range(cycles):
        started, cpu_started, fleet_started = time.monotonic(), time.process_time(), process_cpu(fleet_pid)
        results = await poller.poll_once()
        fleet_cpus.append(round(process_cpu(fleet_pid) - fleet_started, 2))
        nodes = len(results)
        failed += [str(r.error) for r in results if not r.ok]
        walls.append(round(poller.last_duration, 3))
        poll_cpus.append(round(poller.last_cpu, 3))
        # the pause before the next cycle (none by default): the refresh tasks' CPU there counts too
        await asyncio.sleep(max(started + interval - time.monotonic(), 0.0))
        cpus.append(round(time.process_time() - cpu_started, 3))
    lag = await probe.stop()
    return {"nodes": nodes, "wall_s": walls, "cpu_s": cpus, "poll_cpu_s": poll_cpus, "wall_max_s": max(walls),
            "cpu_max_s": max(cpus), "fleet_cpu_s": fleet_cpus, "errors": len(failed), "examples": failed[:5], **lag}


async def _seed(db_url: str, args: argparse.Namespace, tls: bool) -> None:
    """Cluster, nodes (https with TLS), tenant POLL; for poll-10k its meetings mapped to the fleet's."""
    info = FleetInfo(args.fleet_port, args.fleet_secret, [node_domain(i) for i in range(args.nodes)],
                     scheme="https" if tls else "http", ca_file=args.ca_file or "")
    secrets = await seed_database(db_url, info, ("POLL",))
    if args.variant == "poll-10k":
        owned = min(args.owned, args.nodes * args.meetings)
        await own_fleet_meetings(db_url, secrets["POLL"], math.ceil(owned / max(args.nodes, 1)))


async def measure(args: argparse.Namespace, db_url: str) -> dict[str, Any]:
    tls = args.ca_file is not None
    await _seed(db_url, args, tls)
    config: Config = dataclasses.replace(
        CONFIG_BASE,
        database=dataclasses.replace(CONFIG_BASE.database, url=db_url),
        api=dataclasses.replace(CONFIG_BASE.api, node_ca_file=args.ca_file or ""),
    )
    gc.collect()
    peak_reset = reset_peak_rss()
    db = Database(config)
    pool = await db.open(serving=True)  # as `b3lb serve` opens it
    runtime = Runtime(config, pool)
    try:
        await runtime.start()  # loads the tables and starts the refresh tasks, as serve does
        poller = Poller(runtime)
        runtime.poller, runtime.polling = poller, True
        tune_garbage_collector()  # as `b3lb serve` does once it is up
        owned_at_start = len(runtime.meetings)
        row = await _cycles(poller, args.cycles, args.interval, args.fleet_pid)
        owned_at_end = len(runtime.meetings)
    finally:
        await runtime.stop()
        await db.close()
    gc.collect()
    return {
        "scenario": args.variant,
        **row,
        "rss_mb": round(rss_mb(), 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_from": "runtime start" if peak_reset else "process start",
        "owned_meetings": owned_at_end,
        "owned_at_start": owned_at_start,
        "tls": tls,
    }


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # pgserver on hosts without it
    parser = argparse.ArgumentParser(description="b3lb poll-cycle benchmark (run by benchmarks.run)")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--meetings", type=int, default=20, help="meetings per node")
    parser.add_argument("--attendees", type=int, default=5, help="attendees per meeting")
    parser.add_argument("--cycles", type=int, default=4, help="measured cycles per variant (the first included)")
    parser.add_argument("--interval", type=float, default=None,
                        help="seconds from one cycle's start to the next's (0: back to back; default: poller.interval, "
                             "0 for runs of under 5,000 meetings)")
    parser.add_argument("--churn", type=float, default=0.1, help="fraction of each node's meetings changed per poll")
    parser.add_argument("--owned", type=int, default=OWNED_MEETINGS, help="meetings b3lb owns in poll-10k")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--no-tls", action="store_true", help="only the plain-HTTP variant")
    parser.add_argument("--gzip", action="store_true", help="the fleets answer gzip-encoded")
    parser.add_argument("--chunked", action="store_true", help="the fleets answer chunked")
    parser.add_argument("--fleet-cpus", default="", help="CPUs for the fleet process, e.g. 1")
    parser.add_argument("--json", required=True, help="result file")
    # internal: one variant in a child process
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--fleet-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--fleet-secret", default="", help=argparse.SUPPRESS)
    parser.add_argument("--fleet-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--ca-file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant is not None:
        row = uvloop.run(measure(args, os.environ[DB_URL_ENV]))
        Path(args.json).write_text(json.dumps(row, indent=2), encoding="utf-8")
        return 0
    if args.interval is None:
        args.interval = CONFIG_BASE.poller.interval if args.nodes * args.meetings >= SMOKE_MEETINGS else 0.0
    args.fleet_cpu_set = frozenset(int(c) for c in args.fleet_cpus.split(",")) if args.fleet_cpus else None
    args.variant_list = [v for v in args.variants.split(",") if v and not (args.no_tls and v != "poll")]
    unknown = set(args.variant_list) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    rows = orchestrate(args)
    for row in rows:
        row.update(fleet_nodes=args.nodes, meetings_per_node=args.meetings, attendees_per_meeting=args.attendees,
                   churn=args.churn, fleet_gzip=args.gzip, fleet_chunked=args.chunked, interval_s=args.interval)
    Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
