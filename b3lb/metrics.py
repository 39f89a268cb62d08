"""Prometheus metrics: the fleet and tenant figures, plus this process's own request latency, poll
timing, event-loop lag and process metrics (prometheus-client's default registry).

Gauges come from the meeting table (all instances' meetings), counters from `secret_counter`
plus what this process has counted but not flushed yet. The figures are rendered once per poll
cycle into a `Generation` (b3lb/metrics_cache.py decides when, b3lb/metrics_http.py serves it):
every tenant's sample lines per family, from which the global, tenant and secret views are put
together by joining strings. Rendering yields to the event loop every SLICE seconds, so even
thousands of secrets never hold up requests.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from b3lb.db import Q
from b3lb.loadscore import node_state
from b3lb.looplag import EVENT_LOOP_LAG  # noqa: F401 - registers the lag histogram in the process part
from b3lb.models import Tenant
from b3lb.runtime import Runtime
from b3lb.tenancy import SecretContext

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SLICE = 0.001  # seconds of rendering between two yields to the event loop
GZIP_PIECE = 32 * 1024  # bytes compressed between two yields

REQUEST_SECONDS = Histogram(
    "b3lb_request_duration_seconds",
    "Time to answer one BBB API call",
    ["call"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

GAUGES = (  # column, family suffix, help
    ("attendees", "attendees", "Total number of current attendees"),
    ("listeners", "listeners", "Total number of current listeners"),
    ("voices", "voices", "Total number of current voice participants"),
    ("videos", "videos", "Total number of current video participants"),
    ("meetings", "meetings", "Total number of running meetings"),
)
COUNTERS = (
    ("attendees_joined", "attendees", "Number of attendees that have joined"),
    ("meetings_created", "meetings", "Number of meetings that have been created"),
    ("attendee_limit_hits", "attendee_limit_hits", "Number of attendee limit hits"),
    ("meeting_limit_hits", "meeting_limit_hits", "Number of meeting limit hits"),
)
NODE_STATES = {"ok": 0, "error": 1, "maintenance": 2}
# secret_counter columns in the order a Snapshot keeps them
COUNTER_COLUMNS = ("attendees_joined", "meetings_created", "attendee_limit_hits", "meeting_limit_hits",
                   "meeting_duration_count", "meeting_duration_seconds")
GAUGE_COLUMNS = tuple(column for column, _, _ in GAUGES)


def _header(name: str, kind: str, help_text: str) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


# The families of a tenant's block, in output order; the first TENANT_ONLY appear in the global
# and tenant views only (a secret's view has no tenant limits).
HEADERS = (
    _header("b3lb_tenant_attendee_limit", "gauge", "Attendee limit per tenant"),
    _header("b3lb_tenant_meeting_limit", "gauge", "Meeting limit per tenant"),
    _header("b3lb_secret_attendee_limit", "gauge", "Attendee limit per secret"),
    _header("b3lb_secret_meeting_limit", "gauge", "Meeting limit per secret"),
    *(_header(f"b3lb_{name}", "gauge", help_text) for _, name, help_text in GAUGES),
    *(_header(f"b3lb_{name}_total", "counter", help_text) for _, name, help_text in COUNTERS),
    _header("b3lb_meeting_duration_seconds", "summary", "Meeting durations"),
)
TENANT_ONLY = 2
_USAGE = 4  # index of the first usage family (gauges, counters, durations)
_GAUGE_NAMES = tuple(f"b3lb_{name}" for _, name, _ in GAUGES)
_COUNTER_NAMES = tuple(f"b3lb_{name}_total" for _, name, _ in COUNTERS)


def _num(value: float) -> str:
    """A sample value as prometheus-client writes it; small integers without the detour."""
    if type(value) is int and -1_000_000_000 < value < 1_000_000:
        return f"{value}.0"
    return str(floatToGoString(value))


@dataclass
class Snapshot:
    """Per-secret values read once per render: gauge rows and counter totals (COUNTER_COLUMNS)."""

    gauges: dict[int, Sequence[int]] = field(default_factory=dict)
    counters: dict[int, list[int]] = field(default_factory=dict)


async def take_snapshot(runtime: Runtime, floor: dict[int, list[int]] | None = None) -> Snapshot:
    """Gauges and counters from the database plus this process's unflushed counts.

    `floor` (per secret, the totals of the previous render) keeps counters from going down: a
    counter flush that commits between the database read and the look at `pending` makes its
    counts briefly visible in neither, and Prometheus would take the dip for a counter reset."""
    gauge_rows = await runtime.pool.fetch(Q.secret_gauges)
    counter_rows = await runtime.pool.fetch(Q.secret_counters)
    gauges = {r["secret_id"]: tuple(r[c] for c in GAUGE_COLUMNS) for r in gauge_rows}
    counters = {r["secret_id"]: [int(r[c]) for c in COUNTER_COLUMNS] for r in counter_rows}
    for secret_id, delta in runtime.counters.pending.items():  # counted here, not flushed yet
        row = counters.setdefault(secret_id, [0] * len(COUNTER_COLUMNS))
        for index, column in enumerate(COUNTER_COLUMNS):
            row[index] += getattr(delta, column)
    if floor is not None:
        for secret_id, before in floor.items():
            row = counters.get(secret_id)
            counters[secret_id] = before if row is None else [max(a, b) for a, b in zip(row, before, strict=True)]
        known = runtime.directory.by_secret_id  # a removed secret's counters go with it
        floor.clear()
        floor.update((secret_id, row) for secret_id, row in counters.items() if secret_id in known)
    return Snapshot(gauges, counters)


@dataclass
class TenantBlock:
    """One tenant's sample lines per family (HEADERS order), and each sub-secret's own lines."""

    tenant_id: int
    lines: list[str]
    own: dict[int, list[str]]  # sub-secret id -> its lines per family (tenant families empty)


def tenant_block(tenant: Tenant, secrets: list[SecretContext], snapshot: Snapshot) -> TenantBlock:
    """The tenant series sums all its secrets; each secret but sub-id 0 has a series of its own."""
    lines: list[list[str]] = [[] for _ in HEADERS]
    slug = tenant.slug
    lines[0].append(f'b3lb_tenant_attendee_limit{{tenant="{slug}"}} {_num(tenant.attendee_limit)}\n')
    lines[1].append(f'b3lb_tenant_meeting_limit{{tenant="{slug}"}} {_num(tenant.meeting_limit)}\n')
    own: dict[int, list[str]] = {}
    for ctx in secrets:  # by sub-id, which is also label order
        limits = (f'b3lb_secret_attendee_limit{{secret="{ctx.label}"}} {_num(ctx.secret_attendee_limit)}\n',
                  f'b3lb_secret_meeting_limit{{secret="{ctx.label}"}} {_num(ctx.secret_meeting_limit)}\n')
        lines[2].append(limits[0])
        lines[3].append(limits[1])
        if ctx.secret.sub_id != 0:
            own[ctx.secret.id] = ["", "", *limits]
    series = [(slug, [ctx.secret.id for ctx in secrets], None)]
    series.extend((ctx.label, [ctx.secret.id], own[ctx.secret.id]) for ctx in secrets if ctx.secret.sub_id != 0)
    for label, ids, mine in series:
        usage = _usage_lines(label, ids, snapshot)
        for offset, text in enumerate(usage):
            lines[_USAGE + offset].append(text)
        if mine is not None:
            mine.extend(usage)
    return TenantBlock(tenant.id, ["".join(family) for family in lines], own)


def _usage_lines(label: str, ids: list[int], snapshot: Snapshot) -> list[str]:
    """One label's line per usage family: gauges, counters, then the duration summary."""
    gauge_sum = [0] * len(GAUGE_COLUMNS)
    counter_sum = [0] * len(COUNTER_COLUMNS)
    for secret_id in ids:
        row = snapshot.gauges.get(secret_id)
        if row is not None:
            gauge_sum = [a + int(b) for a, b in zip(gauge_sum, row, strict=True)]
        totals = snapshot.counters.get(secret_id)
        if totals is not None:
            counter_sum = [a + b for a, b in zip(counter_sum, totals, strict=True)]
    labels = f'{{secret="{label}"}} '
    out = [f"{name}{labels}{_num(value)}\n" for name, value in zip(_GAUGE_NAMES, gauge_sum, strict=True)]
    out.extend(f"{name}{labels}{_num(value % 2**63)}\n"
               for name, value in zip(_COUNTER_NAMES, counter_sum[: len(COUNTERS)], strict=True))
    out.append(f"b3lb_meeting_duration_seconds_count{labels}{_num(counter_sum[4])}\n"
               f"b3lb_meeting_duration_seconds_sum{labels}{_num(counter_sum[5])}\n")
    return out


NODE_HEADERS = (
    _header("b3lb_node_load", "gauge", "Calculated node load"),
    _header("b3lb_node_state", "gauge", "Node state: 0 ok, 1 error, 2 maintenance"),
    _header("b3lb_node_cpu_percent", "gauge", "CPU load reported by the node"),
    _header("b3lb_node_poll_duration_seconds", "gauge", "Duration of the node's last poll"),
    _header("b3lb_node_poll_age_seconds", "gauge", "Seconds since the node's last good poll"),
)
_NODE_NAMES = ("b3lb_node_load", "b3lb_node_state", "b3lb_node_cpu_percent", "b3lb_node_poll_duration_seconds",
               "b3lb_node_poll_age_seconds")


def _escape(value: str) -> str:
    """A label value as prometheus-client escapes it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


async def node_text(runtime: Runtime) -> str:
    """The node families and the poll cycle's timing (global view only), a slice at a time."""
    slicer = Slicer()
    entries = sorted(runtime.loads.nodes.values(), key=lambda e: (e.cluster.name, e.node.slug))
    lines: list[list[str]] = [[] for _ in NODE_HEADERS]
    load, state, cpu, poll, age = lines
    poller = runtime.poller
    polled: dict[int, float] = poller.poll_seconds if poller is not None else {}
    now = time.time()
    for e in entries:
        labels = f'{{cluster="{_escape(e.cluster.name)}",node="{_escape(e.node.slug)}"}} '
        load.append(f"b3lb_node_load{labels}{floatToGoString(e.load)}\n")
        kind = node_state(e.node.has_errors, e.in_maintenance)
        state.append(f"b3lb_node_state{labels}{NODE_STATES[kind]}.0\n")
        cpu.append(f"b3lb_node_cpu_percent{labels}{floatToGoString(e.node.cpu_load)}\n")
        if e.node.id in polled:
            poll.append(f"b3lb_node_poll_duration_seconds{labels}{floatToGoString(polled[e.node.id])}\n")
        if e.last_ok:
            age.append(f"b3lb_node_poll_age_seconds{labels}{floatToGoString(now - e.last_ok)}\n")
        await slicer.pause()
    parts = [text for header, family in zip(NODE_HEADERS, lines, strict=True) for text in (header, *family)]
    if poller is not None and poller.cycles:
        parts.append(_header("b3lb_poll_cycle_seconds", "gauge", "Wall time of the last poll cycle"))
        parts.append(f"b3lb_poll_cycle_seconds {floatToGoString(poller.last_duration)}\n")
        parts.append(_header("b3lb_poll_cycle_cpu_seconds", "gauge", "CPU time of the last poll cycle"))
        parts.append(f"b3lb_poll_cycle_cpu_seconds {floatToGoString(poller.last_cpu)}\n")
    return "".join(parts)


class Slicer:
    """Yields to the event loop once SLICE seconds of work have passed since the last yield."""

    def __init__(self) -> None:
        self.until = time.perf_counter() + SLICE

    async def pause(self) -> None:
        if time.perf_counter() >= self.until:
            await asyncio.sleep(0)
            self.until = time.perf_counter() + SLICE


@dataclass
class Generation:
    """Everything one render produced; views are put together from it on first use."""

    made: float  # time.monotonic() when the render started
    cycles: int  # poll cycles this process had finished by then
    node_text: str
    blocks: list[TenantBlock]  # by tenant slug
    by_tenant: dict[int, TenantBlock] = field(default_factory=dict)
    by_secret: dict[int, TenantBlock] = field(default_factory=dict)
    bodies: dict[tuple[str, int], bytes] = field(default_factory=dict)
    gzipped: dict[tuple[str, int], bytes] = field(default_factory=dict)
    # The global view gzipped up to a sync flush, and the compressor that continues it (the
    # process part is compressed on top of a copy once a second: metrics_cache.py).
    gzip_prefix: bytes | None = None
    compressor: zlib._Compress | None = None
    serial: int = field(default_factory=lambda: next(_SERIALS))
    source: int | None = None  # mtime_ns of the file it was loaded from (metrics_shared.py), None: rendered here
    _compressing: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.by_tenant = {block.tenant_id: block for block in self.blocks}
        self.by_secret = {sid: block for block in self.blocks for sid in block.own}

    def has(self, view: tuple[str, int]) -> bool:
        kind, key = view
        return kind == "global" or key in (self.by_tenant if kind == "tenant" else self.by_secret)

    def body(self, view: tuple[str, int]) -> bytes:
        """The view's fleet/tenant text (the global view without the process part)."""
        body = self.bodies.get(view)
        if body is None:
            body = self.bodies[view] = "".join(self._parts(view)).encode()
        return body

    def gzip(self, view: tuple[str, int]) -> bytes:
        """A tenant's or secret's view gzipped (small: done at once)."""
        body = self.gzipped.get(view)
        if body is None:
            body = self.gzipped[view] = gzip_bytes(self.body(view))
        return body

    def _parts(self, view: tuple[str, int]) -> Iterator[str]:
        kind, key = view
        if kind == "global":
            yield self.node_text
            for index, header in enumerate(HEADERS):
                yield header
                yield from (block.lines[index] for block in self.blocks)
        elif kind == "tenant":
            block = self.by_tenant[key]
            for header, text in zip(HEADERS, block.lines, strict=True):
                yield header
                yield text
        else:
            mine = self.by_secret[key].own[key]
            for header, text in zip(HEADERS[TENANT_ONLY:], mine[TENANT_ONLY:], strict=True):
                yield header
                yield text

    async def compress_global(self) -> None:
        """gzip_prefix and compressor for the global view (once, however many ask at a time)."""
        if self._compressing is None:
            self._compressing = asyncio.get_running_loop().create_task(self._compress_global())
        await asyncio.shield(self._compressing)

    async def _compress_global(self) -> None:
        body = self.body(GLOBAL)
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip framing
        pieces = []
        for start in range(0, len(body), GZIP_PIECE):
            pieces.append(compressor.compress(body[start : start + GZIP_PIECE]))
            await asyncio.sleep(0)
        pieces.append(compressor.flush(zlib.Z_SYNC_FLUSH))
        self.gzip_prefix, self.compressor = b"".join(pieces), compressor


GLOBAL = ("global", 0)
_SERIALS = itertools.count(1)


def gzip_bytes(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


async def build_generation(runtime: Runtime, floor: dict[int, list[int]] | None = None) -> Generation:
    """Render every tenant's block from one snapshot, yielding to the loop between tenants."""
    made = time.monotonic()
    cycles = getattr(runtime.poller, "cycles", 0)
    snapshot = await take_snapshot(runtime, floor)
    directory = runtime.directory
    tenants, by_tenant = directory.tenants_by_id, directory.secrets_by_tenant  # swapped whole on reload
    slicer = Slicer()
    blocks = []
    for tenant in sorted(tenants.values(), key=lambda t: t.slug):
        secrets = sorted(by_tenant.get(tenant.id, []), key=lambda s: s.secret.sub_id)
        blocks.append(tenant_block(tenant, secrets, snapshot))
        await slicer.pause()
    return Generation(made, cycles, await node_text(runtime), blocks)


_HEADER_TYPES = {"counter": "counter", "info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram",
                 "unknown": "untyped"}
_OPENMETRICS_SUFFIXES = ("_created", "_gsum", "_gcount")


def _sample_line(sample: Sample, extra: dict[str, str]) -> str:
    """One sample as prometheus-client's generate_latest writes it (names here are all plain)."""
    labels = ""
    if sample.labels or extra:
        pairs = sorted({**sample.labels, **extra}.items())
        labels = "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"
    stamp = "" if sample.timestamp is None else f" {int(float(sample.timestamp) * 1000):d}"
    return f"{sample.name}{labels} {floatToGoString(sample.value)}{stamp}\n"


async def format_family(family: Metric, out: list[str], slicer: Slicer, extra: dict[str, str]) -> None:
    """generate_latest's text for one family (plus `extra` labels), yielding to the loop between samples."""
    name, kind = family.name, family.type
    shown = name + "_total" if kind == "counter" else name + "_info" if kind == "info" else name
    documentation = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
    out.append(f"# HELP {shown} {documentation}\n# TYPE {shown} {_HEADER_TYPES.get(kind, kind)}\n")
    trailing: dict[str, list[str]] = {}  # OpenMetrics-only samples, written as gauges after the family
    for sample in family.samples:
        suffix = next((x for x in _OPENMETRICS_SUFFIXES if sample.name == name + x), None)
        (out if suffix is None else trailing.setdefault(suffix, [])).append(_sample_line(sample, extra))
        await slicer.pause()
    for suffix, lines in sorted(trailing.items()):
        out.append(f"# HELP {name}{suffix} {documentation}\n# TYPE {name}{suffix} gauge\n")
        out.extend(lines)


async def render_process(registry: CollectorRegistry = REGISTRY, labels: dict[str, str] | None = None) -> bytes:
    """This process's own metrics (prometheus-client's default registry), a slice at a time;
    `labels` are added to every sample (worker="N" when several workers share the port)."""
    slicer = Slicer()
    parts: list[str] = []
    for family in registry.collect():
        await format_family(family, parts, slicer, labels or {})
        await slicer.pause()
    return "".join(parts).encode()


def view_of(scope: SecretContext | None) -> tuple[str, int]:
    """The cache key of what a request may see: everything, a tenant, or one secret."""
    if scope is None:
        return GLOBAL
    if scope.secret.sub_id == 0:
        return ("tenant", scope.tenant.id)
    return ("secret", scope.secret.id)
