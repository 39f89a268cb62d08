"""The HTTP measurements of benchmarks.run: yardsticks next to every scenario, one stack after another.

For each scenario: yardstick (a) and yardstick (b) for `--yardstick-seconds` each at the scenario's
connection count, then the event-loop lag histogram is scraped, the scenario runs (warm-up, then
`--duration`), the histogram is scraped again and the server's RSS read. The scenario's % of (a)
and % of (b) are ratios to those neighbours in time (this machine's speed drifts within seconds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import lag
from benchmarks.common import PYTHON, REPO, Child, Cores, free_port, peak_rss_mb, pin_preexec, pinned, rss_mb
from benchmarks.loadgen import LoadResult, LoadSpec
from benchmarks.scenarios import STACKS, Scenario, build, hello, precreate_for
from benchmarks.stack import (
    BASE_DOMAIN,
    ApiStack,
    Client,
    FleetOptions,
    Postgres,
    StackSpec,
    Unsupported,
    tenant_slugs,
    wait_until,
)

Row = dict[str, Any]
Special = Callable[["Runner", Postgres, str], list[Row]]
YARDSTICKS = {"a": "delegate", "b": "uvicorn", "handler": "handler"}


def sustained(per_second: list[int]) -> dict[str, float | None]:
    """Rates of the first and the last 10 s of a run (halves when shorter than 20 s)."""
    window = 10 if len(per_second) >= 20 else len(per_second) // 2
    if window < 1:
        return {"first_rps": None, "last_rps": None, "last_vs_first": None}
    first, last = sum(per_second[:window]) / window, sum(per_second[-window:]) / window
    return {"first_rps": round(first, 1), "last_rps": round(last, 1),
            "last_vs_first": round(last / first, 3) if first else None}  # fmt: skip


def result_row(name: str, result: LoadResult, connections: int) -> Row:
    whole = result.per_second[: int(result.seconds)]  # a last partial second would look like a stall
    return {
        "scenario": name, "connections": connections, "requests": result.requests,
        "seconds": round(result.seconds, 3), "rps": round(result.rps, 1), "p50_ms": round(result.p50_ms, 3),
        "p99_ms": round(result.p99_ms, 3), "max_ms": round(result.max_ms, 3), "errors": result.errors,
        "transport_errors": result.transport_errors, "unexpected": result.unexpected,
        "warmup_errors": result.warmup_errors, "answers": result.answers,
        "checked_locations": result.checked_locations, "paths": result.paths, "per_second": result.per_second,
        "min_1s": min(whole) if whole else None, "examples": result.examples, **sustained(whole),
    }  # fmt: skip


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def unavailable_row(name: str, stack: str, why: str, *, failed: bool) -> Row:
    """A scenario that could not run: n/a when a piece has not landed, an error when it broke."""
    return {"scenario": name, "stack": stack, "status": ("failed: " if failed else "n/a: ") + why.splitlines()[0],
            "errors": 1 if failed else 0, "examples": [why[-600:]] if failed else []}  # fmt: skip


class Runner:
    """Runs the HTTP scenarios, stack after stack; keeps the rows and every yardstick measurement."""

    def __init__(self, args: argparse.Namespace, folder: Path, cores: Cores) -> None:
        self.args, self.folder, self.cores = args, folder, cores
        self.rows: list[Row] = []
        self.yardstick_runs: dict[str, list[Row]] = {"a": [], "b": [], "handler": []}
        self.yardsticks: dict[str, tuple[Child, int]] = {}
        self.measurements = 0
        self.started = time.monotonic()

    # -- load -------------------------------------------------------------------------------------

    def spec(self, scenario: Scenario, port: int, seconds: float, warmup: float, targets: Path | None) -> LoadSpec:
        self.measurements += 1  # a phase name per measurement: distinct requests are never reused
        phase = f"m{self.measurements}"
        return LoadSpec(
            port=port, host=scenario.host, paths_file=scenario.write_paths(self.folder, phase),
            connections=scenario.connections, duration=seconds, warmup=warmup, expect_status=scenario.expect_status,
            contains=scenario.contains, excludes=scenario.excludes, count_tag=scenario.count_tag, count=scenario.count,
            headers=scenario.headers, join_targets=str(targets) if targets else "",
            template=scenario.template_for(phase),
        )  # fmt: skip

    def start_load(self, specs: list[LoadSpec]) -> subprocess.Popen[str]:
        """One generator process on the generator core running the specs one after the other."""
        command = [PYTHON, "-m", "benchmarks.loadgen"]
        for spec in specs:
            self.measurements += 1
            spec_file = self.folder / f"spec-{self.measurements}.json"
            spec_file.write_text(json.dumps(asdict(spec)), encoding="utf-8")
            command += ["--spec", str(spec_file)]
        return subprocess.Popen(
            pinned(command, self.cores.generator), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=REPO, preexec_fn=pin_preexec(self.cores.generator),  # type: ignore[arg-type]
        )  # fmt: skip

    @staticmethod
    def finish_load(process: subprocess.Popen[str], specs: list[LoadSpec]) -> list[LoadResult]:
        timeout = sum(s.duration + s.warmup for s in specs) + 120
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        for spec in specs:
            if spec.paths_file:
                Path(spec.paths_file).unlink(missing_ok=True)
        lines = [x for x in out.splitlines() if x.startswith("BENCHJSON ")]
        if len(lines) != len(specs):
            raise RuntimeError(f"load generator failed (exit {process.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
        return [LoadResult(**json.loads(line[len("BENCHJSON ") :])) for line in lines]

    def load(self, specs: list[LoadSpec]) -> list[LoadResult]:
        return self.finish_load(self.start_load(specs), specs)

    # -- yardsticks -------------------------------------------------------------------------------

    def start_yardsticks(self) -> None:
        """The hello-world servers, up for the whole run (idle while b3lb is measured), on the server core."""
        for key, kind in YARDSTICKS.items():
            port = free_port()
            command = [PYTHON, "-m", "benchmarks.yardstick", "--kind", kind, "--port", str(port)]
            child = Child(f"yardstick {kind}", command, self.folder / f"yardstick-{kind}.log", cpus=self.cores.server)
            self.yardsticks[key] = (child, port)
        for key, (child, port) in self.yardsticks.items():
            client = Client(port)
            try:

                def answers(client: Client = client) -> tuple[bool, str]:
                    status, body = client.get("/", BASE_DOMAIN)
                    return status == 200 and body == b"Hello, world", f"HTTP {status} {body[:60]!r}"

                wait_until(answers, f"yardstick {key}", 30, child)
            finally:
                client.close()

    def stop_yardsticks(self) -> None:
        for child, _ in self.yardsticks.values():
            child.stop()

    def measure_yardsticks(self, connections: int, keys: tuple[str, ...] = ("a", "b")) -> dict[str, Row]:
        seconds = self.args.yardstick_seconds
        specs = [self.spec(hello(connections), self.yardsticks[k][1], seconds, 0.0, None) for k in keys]
        found = {}
        for key, result in zip(keys, self.load(specs), strict=True):
            row = result_row(f"yardstick-{key}", result, connections)
            row["rss_mb"] = round(rss_mb(self.yardsticks[key][0].pid), 1)
            self.yardstick_runs[key].append(row)
            found[key] = row
        return found

    # -- scenarios --------------------------------------------------------------------------------

    def measure(self, stack: ApiStack, scenario: Scenario, targets: Path | None) -> Row:
        args = self.args
        sticks = self.measure_yardsticks(scenario.connections)
        stack.check_alive(scenario.name)
        before = stack.lag.read()
        spec = self.spec(scenario, stack.port, args.duration, args.warmup, targets if scenario.join_slug else None)
        result = self.load([spec])[0]
        after = stack.lag.read()
        row = result_row(scenario.name, result, scenario.connections)
        row.update(stack=stack.spec.name, rss_mb=round(rss_mb(stack.server_pid), 1),
                   peak_rss_mb=round(peak_rss_mb(stack.server_pid), 1), **lag.summary(lag.delta(before, after)))
        for key, stick in sticks.items():
            row[f"{key}_rps"], row[f"{key}_p99_ms"] = stick["rps"], stick["p99_ms"]
            row[f"pct_{key}"] = round(100.0 * result.rps / stick["rps"], 1) if stick["rps"] else None
            row["errors"] += stick["errors"]  # a yardstick that fails makes the ratio worthless
        self.progress(row)
        return row

    def progress(self, row: Row) -> None:
        print(
            f"  [{time.monotonic() - self.started:6.1f}s] {row['scenario']:<32} {row['rps']:>8,.0f} req/s  "
            f"p99 {row['p99_ms']:.2f} ms  "
            f"(a) {_pct(row.get('pct_a'))}  (b) {_pct(row.get('pct_b'))}  lag p99/max "
            f"{lag.shown(row.get('lag_p99_ms'))}/{lag.shown(row.get('lag_max_ms'))} ms  errors {row['errors']}",
            file=sys.stderr, flush=True,
        )  # fmt: skip

    def stack_spec(self, name: str, selected: list[str]) -> StackSpec:
        args, cores = self.args, self.cores
        fleet_cpus = cores.server if args.fleet_core == "server" else cores.generator
        spec = StackSpec(name, nodes=args.nodes, poll_interval=args.poll_interval, server_cpus=cores.server,
                         fleet_cpus=fleet_cpus, precreated=precreate_for(name, selected))  # fmt: skip
        if name.startswith("tls"):
            tls_dir = self.folder / f"ca-{name}"
            spec.fleet = FleetOptions(tls_dir=tls_dir, chunked="chunked" in name, gzip="gzip" in name)
        if name == "metrics":
            spec.nodes, spec.tenants = args.metrics_nodes, tuple(tenant_slugs(args.metrics_tenants))
            spec.secrets_per_tenant = args.metrics_secrets
        return spec

    def run_stack(self, postgres: Postgres, name: str, selected: list[str]) -> None:
        wanted = [n for n in STACKS[name] if n in selected]
        started = time.monotonic()
        spec = self.stack_spec(name, selected)
        print(f"stack {name}: {spec.nodes} nodes {' '.join(spec.fleet.arguments())}", file=sys.stderr, flush=True)
        try:
            stack = ApiStack(postgres, self.folder, spec)
        except Exception as exc:  # noqa: BLE001 - n/a (a piece has not landed) or failed; the others still run
            failed = not isinstance(exc, Unsupported)
            self.rows += [unavailable_row(n, name, str(exc), failed=failed) for n in wanted]
            print(f"  {'FAILED' if failed else 'n/a'}: {exc}", file=sys.stderr, flush=True)
            return
        try:
            stack.precreate()
            if "SMALL" in spec.precreated or "BENCH" in spec.precreated:
                stack.wait_for_poll()  # getMeetings: until a poll cycle has stored them
            targets = stack.write_join_targets() if spec.precreated.get("JOIN") else None
            print(f"  set-up done in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
            scenarios = build(name, stack.secrets, self.args.connections)
            for scenario_name in wanted:
                self.rows.append(self.measure(stack, scenarios[scenario_name], targets))
        except Exception as exc:  # noqa: BLE001 - one broken stack is reported, the others still run
            done = {r["scenario"] for r in self.rows}
            self.rows += [unavailable_row(n, name, repr(exc), failed=True) for n in wanted if n not in done]
            print(f"  FAILED: {exc!r}", file=sys.stderr, flush=True)
        finally:
            stack.stop()

    def yardstick_rows(self) -> list[Row]:
        """One row per yardstick: the median of its measurements at the run's connection count."""
        rows = []
        for key in ("a", "b", "handler"):
            runs = [r for r in self.yardstick_runs[key] if r["connections"] == self.args.connections]
            if not runs:
                continue
            ordered = sorted(runs, key=lambda r: r["rps"])
            row = dict(ordered[len(ordered) // 2])
            row["scenario"] = {"a": "yardstick-a", "b": "yardstick-b", "handler": "handler-hello"}[key]
            row["runs_rps"] = [r["rps"] for r in runs]
            row["errors"] = sum(r["errors"] for r in runs)
            rows.append(row)
        return rows

    def run(self, postgres: Postgres, selected: list[str], special: Special) -> None:
        """Every selected HTTP scenario; `special(runner, postgres, name)` runs the scale and workers stacks."""
        self.start_yardsticks()
        try:
            # the RequestHandler hello-world, once, right after (a): informative only (the earlier harness's ceiling)
            found = self.measure_yardsticks(self.args.connections, ("a", "handler"))
            if found["a"]["rps"]:
                found["handler"]["pct_a"] = round(100.0 * found["handler"]["rps"] / found["a"]["rps"], 1)
            for name, names in STACKS.items():
                if not any(n in selected for n in names):
                    continue
                if name in ("scale", "workers"):
                    self.rows += special(self, postgres, name)
                else:
                    self.run_stack(postgres, name, selected)
        finally:
            self.stop_yardsticks()
