"""Prometheus metrics: the fleet and tenant view built per scrape, plus this process's own
request latency, poll timing and process metrics (prometheus-client's default registry).

Gauges come from the meeting table (all instances' meetings), counters from `secret_counter`
plus what this process has counted but not flushed yet.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

from b3lb.db import Q
from b3lb.runtime import Runtime
from b3lb.tenancy import SecretContext

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

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


@dataclass
class Snapshot:
    """Per-secret values read once per scrape."""

    gauges: dict[int, dict[str, int]]
    counters: dict[int, dict[str, int]]


async def take_snapshot(runtime: Runtime) -> Snapshot:
    gauges = {r["secret_id"]: dict(r) for r in await runtime.pool.fetch(Q.secret_gauges)}
    counters: dict[int, dict[str, int]] = {r["secret_id"]: dict(r) for r in await runtime.pool.fetch(Q.secret_counters)}
    for secret_id, delta in runtime.counters.pending.items():  # counted here, not flushed yet
        row = counters.setdefault(secret_id, defaultdict(int))
        for name in delta.__slots__:
            row[name] = row.get(name, 0) + getattr(delta, name)
    return Snapshot(gauges, counters)


class SnapshotCollector:
    """Yields the families for one scope: every tenant (global view) or one secret's list."""

    def __init__(self, runtime: Runtime, snapshot: Snapshot, scope: SecretContext | None) -> None:
        self.runtime, self.snapshot, self.scope = runtime, snapshot, scope

    def _series(self) -> list[tuple[str, list[int]]]:
        """(label, secret ids summed under it): the tenant label sums all its secrets (spec 4.6)."""
        directory = self.runtime.directory
        if self.scope is not None and self.scope.secret.sub_id != 0:
            return [(self.scope.label, [self.scope.secret.id])]
        tenants = [self.scope.tenant] if self.scope is not None else list(directory.tenants_by_id.values())
        series = []
        for tenant in sorted(tenants, key=lambda t: t.slug):
            secrets = sorted(directory.secrets_by_tenant.get(tenant.id, []), key=lambda s: s.secret.sub_id)
            series.append((tenant.slug, [s.secret.id for s in secrets]))
            series.extend((s.label, [s.secret.id]) for s in secrets if s.secret.sub_id != 0)
        return series

    def _secrets_in_scope(self) -> list[SecretContext]:
        directory = self.runtime.directory
        if self.scope is None:
            return sorted(directory.by_secret_id.values(), key=lambda s: s.label)
        if self.scope.secret.sub_id != 0:
            return [self.scope]
        return sorted(directory.secrets_by_tenant.get(self.scope.tenant.id, []), key=lambda s: s.label)

    def collect(self) -> Iterator[Metric]:
        if self.scope is None:
            yield from self._node_families()
        if self.scope is None or self.scope.secret.sub_id == 0:
            tenants = [self.scope.tenant] if self.scope else sorted(
                self.runtime.directory.tenants_by_id.values(), key=lambda t: t.slug)
            yield _gauge("b3lb_tenant_attendee_limit", "Attendee limit per tenant", "tenant",
                         ((t.slug, t.attendee_limit) for t in tenants))
            yield _gauge("b3lb_tenant_meeting_limit", "Meeting limit per tenant", "tenant",
                         ((t.slug, t.meeting_limit) for t in tenants))
        secrets = self._secrets_in_scope()
        yield _gauge("b3lb_secret_attendee_limit", "Attendee limit per secret", "secret",
                     ((s.label, s.secret_attendee_limit) for s in secrets))
        yield _gauge("b3lb_secret_meeting_limit", "Meeting limit per secret", "secret",
                     ((s.label, s.secret_meeting_limit) for s in secrets))
        yield from self._usage_families()

    def _usage_families(self) -> Iterator[Metric]:
        series = self._series()
        gauges, counters = self.snapshot.gauges, self.snapshot.counters

        def total(source: dict[int, dict[str, int]], ids: list[int], column: str) -> int:
            return sum(int(source.get(i, {}).get(column, 0)) for i in ids)

        for column, name, help_text in GAUGES:
            values = [(label, total(gauges, ids, column)) for label, ids in series]
            yield _gauge(f"b3lb_{name}", help_text, "secret", values)
        for column, name, help_text in COUNTERS:
            family = CounterMetricFamily(f"b3lb_{name}", help_text, labels=["secret"])
            for label, ids in series:
                family.add_metric([label], total(counters, ids, column) % 2**63)
            yield family
        durations = SummaryMetricFamily("b3lb_meeting_duration_seconds", "Meeting durations", labels=["secret"])
        for label, ids in series:
            durations.add_metric([label], total(counters, ids, "meeting_duration_count"),
                                 total(counters, ids, "meeting_duration_seconds"))
        yield durations

    def _node_families(self) -> Iterator[Metric]:
        entries = sorted(self.runtime.loads.nodes.values(), key=lambda e: (e.cluster.name, e.node.slug))
        load = GaugeMetricFamily("b3lb_node_load", "Calculated node load", labels=["node", "cluster"])
        state = GaugeMetricFamily("b3lb_node_state", "Node state: 0 ok, 1 error, 2 maintenance",
                                  labels=["node", "cluster"])
        cpu = GaugeMetricFamily("b3lb_node_cpu_percent", "CPU load reported by the node", labels=["node", "cluster"])
        poll = GaugeMetricFamily("b3lb_node_poll_duration_seconds", "Duration of the node's last poll",
                                 labels=["node", "cluster"])
        age = GaugeMetricFamily("b3lb_node_poll_age_seconds", "Seconds since the node's last good poll",
                                labels=["node", "cluster"])
        poller = self.runtime.poller
        now = time.time()
        for e in entries:
            labels = [e.node.slug, e.cluster.name]
            load.add_metric(labels, e.load)
            kind = "maintenance" if e.node.maintenance else "error" if e.node.has_errors else "ok"
            state.add_metric(labels, NODE_STATES[kind])
            cpu.add_metric(labels, e.node.cpu_load)
            if poller is not None and e.node.id in poller.poll_seconds:
                poll.add_metric(labels, poller.poll_seconds[e.node.id])
            if e.last_ok:
                age.add_metric(labels, now - e.last_ok)
        yield from (load, state, cpu, poll, age)
        if poller is not None and poller.cycles:
            yield GaugeMetricFamily("b3lb_poll_cycle_seconds", "Wall time of the last poll cycle",
                                    value=poller.last_duration)
            yield GaugeMetricFamily("b3lb_poll_cycle_cpu_seconds", "CPU time of the last poll cycle",
                                    value=poller.last_cpu)


def _gauge(name: str, help_text: str, label: str, values: Iterable[tuple[str, float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=[label])
    for key, value in values:
        family.add_metric([key], value)
    return family


async def render(runtime: Runtime, scope: SecretContext | None) -> bytes:
    """Prometheus text for the global view (scope None) or one secret's view."""
    snapshot = await take_snapshot(runtime)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(runtime, snapshot, scope))  # type: ignore[arg-type]
    text = generate_latest(registry)
    if scope is None:  # this process's latency histograms, poll timing and process metrics
        text += generate_latest(REGISTRY)
    return text
