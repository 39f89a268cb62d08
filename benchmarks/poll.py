"""The `poll` scenario: one poll cycle over a large fake fleet, measured in-process.

Runs as its own process (`python -m benchmarks.poll ...`, started by benchmarks.run) so that its
RSS is b3lb's runtime and poller only. The fleet is yet another process, pinned to the other core,
so the CPU seconds reported (time.process_time) are the b3lb side only: the poller, asyncpg and
the HTTP client. PostgreSQL's own CPU is not included.

Two variants on the same fleet:
- `poll`: no meeting belongs to the load balancer (node loads and counts only);
- `poll-10k`: at least 10,000 of the fleet's meetings are mapped to load balancer meetings with
  one INSERT ... SELECT, so the poller also keeps their XML for getMeetings and stores the lists.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from b3lb.config import load_config
from b3lb.memory import tune_garbage_collector
from b3lb.poller import Poller
from b3lb.runtime import Runtime
from benchmarks.common import REPO, peak_rss_mb, rss_mb
from benchmarks.stack import FleetInfo, Postgres, seed_database, start_fleet

OWNED_MEETINGS = 10_000
OWN_SQL = """
INSERT INTO meeting (secret_id, meeting_id, meeting_name, node_id)
SELECT $1, 'm-' || n.slug || '-' || lpad(k::text, 4, '0'), 'Meeting ' || k, n.id
FROM node n CROSS JOIN generate_series(0, $2 - 1) AS k
"""


async def _cycles(runtime: Runtime, poller: Poller, cycles: int) -> dict[str, Any]:
    warm = await poller.poll_once()  # warm-up: first writes of every node list, caches, connections
    warm_wall, warm_cpu = poller.last_duration, poller.last_cpu
    failed = [r.error for r in warm if not r.ok]
    walls, cpus = [], []
    for _ in range(cycles):
        results = await poller.poll_once()
        failed += [r.error for r in results if not r.ok]
        walls.append(poller.last_duration)
        cpus.append(poller.last_cpu)
    gc.collect()
    return {
        "nodes": len(warm),
        "warmup_wall_s": warm_wall,
        "warmup_cpu_s": warm_cpu,
        "wall_s": walls,
        "cpu_s": cpus,
        "wall_max_s": max(walls),
        "cpu_max_s": max(cpus),
        "rss_mb": rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
        "errors": len(failed),
        "examples": failed[:5],
        "owned_meetings": len(runtime.meetings),
        "owned_with_xml": sum(1 for ref in runtime.meetings.by_key.values() if ref.xml),
    }


async def measure(db_url: str, fleet: FleetInfo, cycles: int, owned: int) -> list[dict[str, Any]]:
    secrets = await seed_database(db_url, fleet, ("POLL",))
    base = load_config(REPO / "conf" / "b3lb.conf", env={})
    config = dataclasses.replace(base, database=dataclasses.replace(base.database, url=db_url))
    pool = await asyncpg.create_pool(db_url, min_size=2, max_size=config.database.pool_max_size)
    runtime = Runtime(config, pool)
    rows = []
    try:
        # No runtime.start(): its periodic refresh tasks would add CPU to the measured cycles.
        await runtime.refresh_directory()
        await runtime.refresh_meetings()
        poller = Poller(runtime)
        runtime.poller, runtime.polling = poller, True
        tune_garbage_collector()  # as `b3lb serve` does once it is up
        rows.append({"scenario": "poll", **await _cycles(runtime, poller, cycles)})
        if owned > 0:
            secret_id = await pool.fetchval("SELECT id FROM secret WHERE secret = $1", secrets["POLL"])
            per_node = math.ceil(owned / max(len(fleet.domains), 1))
            await pool.execute(OWN_SQL, secret_id, per_node)
            await runtime.refresh_meetings()
            rows.append({"scenario": "poll-10k", **await _cycles(runtime, poller, cycles)})
    finally:
        await runtime.nodes.aclose()
        await pool.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # pgserver on hosts without it
    parser = argparse.ArgumentParser(description="b3lb poll-cycle benchmark (run by benchmarks.run)")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--meetings", type=int, default=20, help="meetings per node")
    parser.add_argument("--attendees", type=int, default=5, help="attendees per meeting")
    parser.add_argument("--cycles", type=int, default=3, help="measured cycles (after one warm-up)")
    parser.add_argument("--owned", type=int, default=OWNED_MEETINGS, help="meetings owned in the 2nd variant")
    parser.add_argument("--fleet-cpus", default="", help="CPUs for the fleet process, e.g. 1")
    parser.add_argument("--json", required=True, help="result file")
    args = parser.parse_args(argv)
    owned = min(args.owned, args.nodes * args.meetings)
    fleet_cpus = frozenset(int(c) for c in args.fleet_cpus.split(",")) if args.fleet_cpus else None
    folder = Path(tempfile.mkdtemp(prefix="b3lb-bench-poll-"))
    postgres = Postgres(folder)  # DATABASE_URL from benchmarks.run (its embedded server)
    started = time.monotonic()
    fleet, info = start_fleet(args.nodes, folder, fleet_cpus, meetings=args.meetings, attendees=args.attendees)
    try:
        db_url = postgres.new_schema("benchpoll")
        setup_seconds = time.monotonic() - started
        rows = uvloop.run(measure(db_url, info, args.cycles, owned))
    finally:
        fleet.stop()
        postgres.stop()
        shutil.rmtree(folder / "pgdata", ignore_errors=True)  # only there without DATABASE_URL
    for row in rows:
        row.update(
            fleet_nodes=args.nodes,
            meetings_per_node=args.meetings,
            attendees_per_meeting=args.attendees,
            setup_s=round(setup_seconds, 2),
        )
    Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
