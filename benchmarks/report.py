"""The result tables, the issues' targets (PASS/MISS/n/a) and the JSON file."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.lag import shown as lag_shown

Row = dict[str, Any]
# Rows that are not b3lb under load, or whose lag a scrape cannot judge (several workers).
NO_LAG = ("yardstick-a", "yardstick-b", "handler-hello", "workers-1", "workers-2")


@dataclass
class Target:
    name: str
    value: float | None  # None: the scenarios it needs did not run (or a piece has not landed)
    limit: float
    unit: str
    higher_is_better: bool
    strict: bool = False  # "< limit" rather than "<= limit"
    note: str = ""
    errors: int = 0  # wrong answers in the scenarios it is measured on: a scenario with errors fails

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        if self.errors:
            return "MISS"
        if self.higher_is_better:
            ok = self.value > self.limit if self.strict else self.value >= self.limit
        else:
            ok = self.value < self.limit if self.strict else self.value <= self.limit
        return "PASS" if ok else "MISS"

    def line(self) -> str:
        sign = (">" if self.higher_is_better else "<") + ("" if self.strict else "=")
        shown = "-" if self.value is None else ("inf" if math.isinf(self.value) else f"{self.value:.2f}") + self.unit
        note = f"  [{self.note}]" if self.note else ""
        return f"{self.verdict:4}  {self.name:<52} {shown:>12}  (target {sign} {self.limit:g}{self.unit}){note}"


def num(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _get(rows: dict[str, Row], name: str, key: str) -> float | None:
    value = rows.get(name, {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def http_targets(rows: dict[str, Row]) -> list[Target]:
    """Issue 12's targets on the HTTP scenarios."""
    def pct(name: str, limit: float, label: str = "") -> Target:
        return Target(f"{label or name} req/s as % of yardstick (a)", _get(rows, name, "pct_a"), limit, "%", True)

    def drift(name: str) -> Target:
        ratio = _get(rows, name, "last_vs_first")
        value = abs(ratio - 1.0) * 100 if ratio is not None else None
        return Target(f"{name} sustained: |last 10 s / first 10 s - 1|", value, 10, "%", False)

    found = [
        (pct("join", 70), "join"),
        (Target("join p99 / yardstick (a) p99 (32 connections)",
                _ratio(_get(rows, "join", "p99_ms"), _get(rows, "join", "a_p99_ms")), 1.5, "x", False), "join"),
        (Target("join-1c p99 (1 connection)", _get(rows, "join-1c", "p99_ms"), 1.0, " ms", False), "join-1c"),
        (pct("isMeetingRunning", 40), "isMeetingRunning"),
        (pct("getMeetingInfo", 40), "getMeetingInfo"),
        (pct("getMeetings-50", 55), "getMeetings-50"),
        (pct("getMeetings-500", 30), "getMeetings-500"),
        (pct("create", 25, "create (HTTP nodes)"), "create"),
        (pct("create-tls", 18, "create-tls (TLS nodes)"), "create-tls"),
        (drift("create"), "create"),
        (drift("create-tls"), "create-tls"),
        (Target("create-1c p99 (1 connection)", _get(rows, "create-1c", "p99_ms"), 30, " ms", False), "create-1c"),
        (Target("create p99 (32 connections)", _get(rows, "create", "p99_ms"), 100, " ms", False), "create"),
        (pct("metrics", 30, "metrics (global view)"), "metrics"),
        (Target(f"scale: peak RSS with {_get(rows, 'scale', 'owned_meetings') or 100_000:,.0f} routed meetings",
                _get(rows, "scale", "peak_rss_mb"), 250, " MB", False), "scale"),
        (Target("scale: RSS two poll cycles after every meeting ended", _get(rows, "scale-end-all", "rss_mb"),
                100, " MB", False, strict=True), "scale-end-all"),
        (Target("workers: joins per CPU-s, N=2 / N=1", _get(rows, "workers-2", "efficiency_vs_1"), 0.9, "", True),
         "workers-1 workers-2"),
    ]  # fmt: skip
    for target, names in found:
        target.errors = sum(int(rows.get(n, {}).get("errors") or 0) for n in names.split())
        if target.errors:
            target.note = f"{target.errors} wrong answers or failures: the scenario failed"
    return [target for target, _ in found]


def lag_targets(http_rows: list[Row]) -> list[Target]:
    """Lag p99 and max of the worst scenario; n/a while any measured scenario has no histogram."""
    measured = [r for r in http_rows if r["scenario"] not in NO_LAG and not r.get("status")]
    found = []
    for key, limit, label in (("lag_p99_ms", 2.0, "p99"), ("lag_max_ms", 20.0, "max")):
        missing = [r["scenario"] for r in measured if r.get(key) is None]
        values = [(r[key], r["scenario"]) for r in measured if r.get(key) is not None]
        if not measured or missing:
            note = f"no lag histogram: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}" if missing else ""
            found.append(Target(f"event-loop lag {label}, worst scenario", None, limit, " ms", False, note=note))
            continue
        worst, where = max(values)
        found.append(Target(f"event-loop lag {label}, worst scenario ({where})", worst, limit, " ms", False))
    return found


def poll_targets(poll_rows: list[Row]) -> list[Target]:
    """Per poll row (benchmarks/poll.py, read defensively): cycle wall and CPU, peak RSS with 10k owned."""
    found = []
    for row in poll_rows:
        name = str(row.get("scenario", "poll"))
        if row.get("status"):
            continue
        found.append(Target(f"{name}: slowest cycle wall time", _num(row.get("wall_max_s")), 2.0, " s", False))
        found.append(Target(f"{name}: most CPU in a cycle", _num(row.get("cpu_max_s")), 1.0, " s", False))
        owned = _num(row.get("owned_meetings")) or 0
        if owned >= 10_000 or "10k" in name:
            found.append(Target(f"{name}: peak RSS with {owned:,.0f} routed meetings", _num(row.get("peak_rss_mb")),
                                150, " MB", False))  # fmt: skip
    return found


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def targets(
    http_rows: list[Row], poll_rows: list[Row], recording_rows: list[Row] | None = None,
    render_doc: dict[str, Any] | None = None,
) -> list[Target]:
    """The targets of issues 12 (HTTP, lag, RSS, poll, workers), 10 and 11 that this run can judge."""
    rows = {r["scenario"]: r for r in http_rows}
    recordings = {r["scenario"]: r for r in recording_rows or []}
    found = http_targets(rows) + lag_targets(http_rows) + poll_targets(poll_rows)
    found.append(Target("getRecordings: 1,000 listed, p50 server time",
                        _get(recordings, "getRecordings-1000", "p50_ms"), 50, " ms", False))  # fmt: skip
    found += [Target(**t) for t in (render_doc or {}).get("targets", [])]  # issue 11.8, judged by benchmarks.render
    counted = http_rows + poll_rows + (recording_rows or [])
    errors = float(sum(int(r.get("errors") or 0) for r in counted) + int((render_doc or {}).get("errors") or 0))
    skipped = [r["scenario"] for r in counted if str(r.get("status", "")).startswith("n/a")]
    note = f"not run: {', '.join(skipped)}" if skipped else ""
    found.append(Target("errors in all scenarios (warm-up included)", errors if counted else None, 0, "", False,
                        note=note))  # fmt: skip
    return found


def _table(headers: list[str], aligns: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(f"{h:{a}{w}}" for h, a, w in zip(headers, aligns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, aligns, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _columns() -> list[tuple[str, str, Callable[[Row], str]]]:
    def number(key: str, digits: int) -> Callable[[Row], str]:
        return lambda r: num(r.get(key), digits)

    return [
        ("scenario", "<", lambda r: str(r["scenario"])),
        ("conns", ">", lambda r: str(r.get("connections", "-"))),
        ("req/s", ">", number("rps", 0)),
        ("p50 ms", ">", number("p50_ms", 2)),
        ("p99 ms", ">", number("p99_ms", 2)),
        ("errors", ">", lambda r: str(r.get("errors", 0))),
        ("RSS MB", ">", number("rss_mb", 1)),
        ("% (a)", ">", number("pct_a", 1)),
        ("% (b)", ">", number("pct_b", 1)),
        ("lag p99 ms", ">", lambda r: "-" if r["scenario"] in NO_LAG else lag_shown(r.get("lag_p99_ms"))),
        ("lag max ms", ">", lambda r: "-" if r["scenario"] in NO_LAG else lag_shown(r.get("lag_max_ms"))),
    ]


def http_table(rows: list[Row]) -> str:
    columns = _columns()
    cells = []
    for row in rows:
        if row.get("status"):  # did not run: its reason is under "notes"
            cells.append([render(row) if name in ("scenario", "errors") else "-" for name, _, render in columns])
            continue
        cells.append([render(row) for _, _, render in columns])
    return _table([c[0] for c in columns], [c[1] for c in columns], cells)


def detail_tables(rows: list[Row]) -> list[str]:
    """Per-second rates of the create scenarios, the scale scenario, the workers comparison."""
    parts = []
    creates = [r for r in rows if r["scenario"].startswith("create") and not r.get("status")]
    if creates:
        cells = [[r["scenario"], num(r.get("first_rps"), 0), num(r.get("last_rps"), 0), num(r.get("last_vs_first"), 3),
                  str(r.get("min_1s", "-"))] for r in creates]  # fmt: skip
        parts.append(_table(["create runs", "first 10 s req/s", "last 10 s req/s", "last/first", "slowest second"],
                            ["<", ">", ">", ">", ">"], cells))  # fmt: skip
    scale = {r["scenario"]: r for r in rows if r["scenario"].startswith("scale") and not r.get("status")}
    if "scale" in scale:
        s, end = scale["scale"], scale.get("scale-end-all", {})
        cells = [[f"{num(s.get('owned_meetings'), 0)}", num(s.get("join_rps"), 0), num(s.get("join_p99_ms")),
                  num(s.get("create_rps"), 0), num(s.get("create_p99_ms")), num(s.get("peak_rss_mb"), 1),
                  num(s.get("rss_mb"), 1), num(end.get("rss_mb"), 1), str(end.get("meetings_left", "-"))]]
        parts.append(_table(["scale: routed", "join req/s", "join p99", "create req/s", "create p99", "peak RSS MB",
                             "RSS MB at end", "RSS after end-all", "meetings left"], ["<"] + [">"] * 8, cells))
    workers = [r for r in rows if r["scenario"].startswith("workers-") and not r.get("status")]
    if workers:
        cells = [[r["scenario"], str(r.get("processes", "-")), num(r.get("rps"), 0), num(r.get("server_cpu_s")),
                  num(r.get("joins_per_cpu_s"), 0), num(r.get("efficiency_vs_1"), 3)] for r in workers]
        parts.append(_table(["workers", "processes", "join req/s", "server CPU s", "joins per CPU-s", "vs N=1"],
                            ["<", ">", ">", ">", ">", ">"], cells))
    return parts  # fmt: skip


def poll_table(rows: list[Row]) -> str:
    headers = ["scenario", "nodes x meetings", "owned", "wall s (per cycle)", "CPU s (per cycle)", "RSS MB", "peak MB",
               "errors"]  # fmt: skip

    def series(row: Row, key: str) -> str:
        values = row.get(key)
        return " ".join(f"{x:.2f}" for x in values) if isinstance(values, list) else "-"

    cells = [
        [str(r.get("scenario", "?")), f"{r.get('fleet_nodes', '?')} x {r.get('meetings_per_node', '?')}",
         num(r.get("owned_meetings"), 0), series(r, "wall_s"), series(r, "cpu_s"), num(r.get("rss_mb"), 1),
         num(r.get("peak_rss_mb"), 1), str(r.get("errors", "?"))]
        for r in rows
    ]  # fmt: skip
    return _table(headers, ["<", ">", ">", ">", ">", ">", ">", ">"], cells)


def _yardstick_line(rows: list[Row]) -> str:
    by_name = {r["scenario"]: r for r in rows}
    parts = []
    for name, label in (("yardstick-a", "(a) Tornado HTTPMessageDelegate hello-world on b3lb's HTTP server"),
                        ("yardstick-b", "(b) uvicorn + httptools ASGI hello-world"),
                        ("handler-hello", "Tornado RequestHandler hello-world (informative)")):  # fmt: skip
        row = by_name.get(name)
        if row is not None:
            runs = row.get("runs_rps") or [row["rps"]]
            parts.append(f"{label}: {row['rps']:,.0f} req/s (median of {len(runs)}, {min(runs):,.0f}-{max(runs):,.0f})")
    return "\n".join(parts)


def render(
    meta: dict[str, Any], http_rows: list[Row], poll_rows: list[Row], found: list[Target],
    recording_rows: list[Row] | None = None, render_doc: dict[str, Any] | None = None,
) -> str:
    parts = [
        f"b3lb benchmark {meta['date']}: {meta['cores']} cores ({meta['cpu_model']}), load by {meta['tool']}, "
        f"{meta['pinning']}, PostgreSQL {meta['postgres']}, {meta['nodes']} fake nodes, poller every "
        f"{meta['poll_interval']:g} s",
        f"each scenario: yardsticks (a) and (b) {meta['yardstick_seconds']:g} s each, then warm-up "
        f"{meta['warmup']:g} s (checked) and {meta['duration']:g} s measured; whole run "
        f"{meta.get('total_minutes', '?')} min",
        _yardstick_line(http_rows),
        "",
    ]
    if http_rows:
        parts += [http_table(http_rows), ""]
        for table in detail_tables(http_rows):
            parts += [table, ""]
    if poll_rows:
        parts += [poll_table(poll_rows), ""]
    if recording_rows and not recording_rows[0].get("status"):
        from benchmarks.recordings import table as recordings_table

        parts += [recordings_table(recording_rows), ""]
    if render_doc and not render_doc.get("failed"):
        from benchmarks.render import table as render_table

        parts += [render_table(render_doc, with_targets=False), ""]
    notes = [f"  {r['scenario']}: {r['status']}" for r in http_rows + poll_rows if r.get("status")]
    notes += [f"  {r['scenario']}: {e}" for r in http_rows + poll_rows for e in r.get("examples", [])[:3]]
    notes += [f"  {r['scenario']}: {n}" for r in http_rows for n in r.get("notes", [])]
    if notes:
        parts += ["notes:", *notes, ""]
    parts += ["targets (issues 12, 10, 11):", *(t.line() for t in found)]
    return "\n".join(parts)


def _finite(value: Any) -> Any:
    """JSON without Infinity: a lag beyond the last finite bucket is written as the string "+Inf"."""
    if isinstance(value, float) and math.isinf(value):
        return "+Inf"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


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
    path.write_text(json.dumps(_finite(document), indent=2) + "\n", encoding="utf-8")
