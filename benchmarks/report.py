"""The result table, the issue's targets (PASS/MISS) and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

Row = dict[str, Any]


@dataclass
class Target:
    name: str
    value: float | None  # None: the scenarios it needs did not run
    limit: float
    unit: str
    higher_is_better: bool

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        ok = self.value >= self.limit if self.higher_is_better else self.value <= self.limit
        return "PASS" if ok else "MISS"

    def line(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        shown = "-" if self.value is None else f"{self.value:.2f}{self.unit}"
        return f"{self.verdict:4}  {self.name:<44} {shown:>12}  (target {sign} {self.limit:.2f}{self.unit})"


def _field(rows: dict[str, Row], name: str, key: str) -> float | None:
    row = rows.get(name)
    value = row.get(key) if row is not None else None
    return float(value) if value is not None else None


def targets(
    http_rows: list[Row], poll_rows: list[Row], recording_rows: list[Row] | None = None,
    render_doc: dict[str, Any] | None = None,
) -> list[Target]:
    """The targets of issues 5, 10 and 11 that this run can judge."""
    rows = {r["scenario"]: r for r in http_rows}
    recordings = {r["scenario"]: r for r in recording_rows or []}
    polls = {r["scenario"]: r for r in poll_rows}
    # the ceiling measured right before join, else the median ceiling
    ceiling_p99 = _field(rows, "join", "ceiling_p99_ms") or _field(rows, "ceiling", "p99_ms")
    join_p99 = _field(rows, "join", "p99_ms")
    found: list[Target] = [
        Target("join req/s as % of ceiling", _field(rows, "join", "pct_ceiling"), 70, "%", True),
        Target("join-1c p99 (1 connection)", _field(rows, "join-1c", "p99_ms"), 2.0, " ms", False),
        Target(
            "join p99 / ceiling p99 (32 connections)",
            join_p99 / ceiling_p99 if join_p99 is not None and ceiling_p99 else None,
            2.0,
            "x",
            False,
        ),
        Target("create req/s as % of ceiling", _field(rows, "create", "pct_ceiling"), 25, "%", True),
        Target(
            "isMeetingRunning req/s as % of ceiling", _field(rows, "isMeetingRunning", "pct_ceiling"), 35, "%", True
        ),
        Target("getMeetings-50 req/s as % of ceiling", _field(rows, "getMeetings-50", "pct_ceiling"), 50, "%", True),
    ]
    for name in ("poll", "poll-10k"):
        found.append(Target(f"{name}: slowest cycle wall time", _field(polls, name, "wall_max_s"), 2.0, " s", False))
        found.append(Target(f"{name}: most CPU in a cycle", _field(polls, name, "cpu_max_s"), 1.0, " s", False))
    found.append(Target("poll-10k: RSS with 10k meetings", _field(polls, "poll-10k", "rss_mb"), 150, " MB", False))
    found.append(Target("getRecordings: 1,000 listed, p50 server time",
                        _field(recordings, "getRecordings-1000", "p50_ms"), 50, " ms", False))  # fmt: skip
    found += [Target(**t) for t in (render_doc or {}).get("targets", [])]  # issue 11.8, judged by benchmarks.render
    all_rows = http_rows + poll_rows
    errors = float(sum(r.get("errors", 0) for r in all_rows)) if all_rows else None
    found.append(Target("errors in all scenarios", errors, 0, "", False))
    return found


def _columns() -> list[tuple[str, str, Callable[[Row], str]]]:
    def number(key: str, digits: int) -> Callable[[Row], str]:
        return lambda r: "-" if r.get(key) is None else f"{r[key]:,.{digits}f}"

    return [
        ("scenario", "<", lambda r: str(r["scenario"])),
        ("conns", ">", lambda r: str(r["connections"])),
        ("req/s", ">", number("rps", 0)),
        ("p50 ms", ">", number("p50_ms", 2)),
        ("p99 ms", ">", number("p99_ms", 2)),
        ("errors", ">", lambda r: str(r["errors"])),
        ("RSS MB", ">", number("rss_mb", 1)),
        ("% ceiling", ">", number("pct_ceiling", 1)),
    ]


def _table(headers: list[str], aligns: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(f"{h:{a}{w}}" for h, a, w in zip(headers, aligns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, aligns, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def http_table(rows: list[Row]) -> str:
    columns = _columns()
    cells = [[render(row) for _, _, render in columns] for row in rows]
    return _table([c[0] for c in columns], [c[1] for c in columns], cells)


def poll_table(rows: list[Row]) -> str:
    headers = [
        "scenario",
        "nodes x meetings",
        "owned",
        "wall s (per cycle)",
        "CPU s (per cycle)",
        "RSS MB",
        "peak MB",
        "errors",
    ]
    cells = [
        [
            r["scenario"],
            f"{r['fleet_nodes']} x {r['meetings_per_node']}",
            f"{r['owned_meetings']:,}",
            " ".join(f"{x:.2f}" for x in r["wall_s"]),
            " ".join(f"{x:.2f}" for x in r["cpu_s"]),
            f"{r['rss_mb']:.1f}",
            f"{r['peak_rss_mb']:.1f}",
            str(r["errors"]),
        ]
        for r in rows
    ]
    return _table(headers, ["<", ">", ">", ">", ">", ">", ">", ">"], cells)


def render(
    meta: dict[str, Any], http_rows: list[Row], poll_rows: list[Row], found: list[Target],
    recording_rows: list[Row] | None = None, render_doc: dict[str, Any] | None = None,
) -> str:
    parts = [
        f"b3lb benchmark {meta['date']}: {meta['cores']} cores ({meta['cpu_model']}), load by {meta['tool']}, "
        f"{meta['pinning']}, PostgreSQL {meta['postgres']}, {meta['nodes']} fake nodes",
        f"warm-up {meta['warmup']}s, then {meta['duration']}s per scenario",
        "",
    ]
    if http_rows:
        parts += [http_table(http_rows), ""]
    if poll_rows:
        parts += [poll_table(poll_rows), ""]
    if recording_rows:
        from benchmarks.recordings import table as recordings_table

        parts += [recordings_table(recording_rows), ""]
    if render_doc:
        from benchmarks.render import table as render_table

        parts += [render_table(render_doc, with_targets=False), ""]
    notes = [f"  {r['scenario']}: {e}" for r in http_rows + poll_rows for e in r.get("examples", [])[:3]]
    notes += [
        f"  {r['scenario']}: only {r['paths']:,} distinct requests, some sent twice"
        for r in http_rows
        if r.get("wrapped")
    ]
    if notes:
        parts += ["notes:", *notes, ""]
    parts += ["targets (issues 5, 10, 11):", *(t.line() for t in found)]
    return "\n".join(parts)


def write_json(
    path: Path, meta: dict[str, Any], http_rows: list[Row], poll_rows: list[Row], found: list[Target],
    recording_rows: list[Row] | None = None, render_doc: dict[str, Any] | None = None,
) -> None:
    document = {
        **meta,
        "rows": http_rows,
        "poll": poll_rows,
        "recordings": recording_rows or [],
        "render": render_doc,
        "targets": [{**asdict(t), "verdict": t.verdict} for t in found],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
