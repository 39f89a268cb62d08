"""Per-cluster load over the last hour, for the dashboard's chart (issue 13.3).

The serving process samples its own load table (runtime.loads, memory only, no SQL) every
`every` seconds into one ring per cluster. Memory is bounded: a ring keeps at most span/every
samples and at most MAX_CLUSTERS clusters are tracked; a cluster that leaves the table is dropped
once its last sample is older than the span. Each process keeps its own rings: with
`serve --workers N` a dashboard sees the history of the worker that answers it, which samples the
same database-backed node table as the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from b3lb.balancer import NodeEntry

log = logging.getLogger("b3lb.admin.history")

SPAN_SECONDS = 3600.0
SAMPLE_SECONDS = 15.0  # 240 samples per cluster and hour
MAX_CLUSTERS = 200  # beyond this, clusters are not charted (the rings stay bounded whatever the table holds)


@dataclass(frozen=True, slots=True)
class ClusterSample:
    """One cluster at one moment: the load summed over its usable nodes, and its usage."""

    at: float  # time.time()
    load: float
    attendees: int
    meetings: int
    nodes_ok: int
    nodes: int

    def as_list(self) -> list[float | int]:
        # Lists, not objects, on the wire: an hour of 240 samples per cluster stays small.
        return [round(self.at, 1), round(self.load, 2), self.attendees, self.meetings, self.nodes_ok, self.nodes]


FIELDS = ("at", "load", "attendees", "meetings", "nodes_ok", "nodes")


def summarize(entries: Iterable[NodeEntry], at: float) -> dict[str, ClusterSample]:
    """One sample per cluster from the load table's entries. Nodes in error or maintenance add
    nothing to the load (their score is negative by design, not a load) nor to the counts."""
    totals: dict[str, list[float]] = {}
    for entry in entries:
        row = totals.setdefault(entry.cluster.name, [0.0, 0, 0, 0, 0])
        row[4] += 1
        if entry.load >= 0:
            node = entry.node
            row[0] += entry.load
            row[1] += node.attendees
            row[2] += node.meetings
            row[3] += 1
    return {
        name: ClusterSample(at, load, int(attendees), int(meetings), int(ok), int(count))
        for name, (load, attendees, meetings, ok, count) in totals.items()
    }


class LoadHistory:
    """Rings of ClusterSample per cluster name, `span` seconds long."""

    def __init__(self, span: float = SPAN_SECONDS, every: float = SAMPLE_SECONDS,
                 max_clusters: int = MAX_CLUSTERS) -> None:
        if every <= 0 or span < every:
            raise ValueError("history: need 0 < every <= span")
        self.span = span
        self.every = every
        self.max_clusters = max_clusters
        self.per_sample = int(span // every) + 1
        self.rings: dict[str, deque[ClusterSample]] = {}
        self.version = 0  # counts additions: the event stream re-sends the history when it moved

    def add(self, samples: dict[str, ClusterSample]) -> None:
        for name, sample in samples.items():
            ring = self.rings.get(name)
            if ring is None:
                if len(self.rings) >= self.max_clusters:
                    continue
                ring = self.rings[name] = deque(maxlen=self.per_sample)
            ring.append(sample)
        self.version += 1
        self.prune(max((s.at for s in samples.values()), default=time.time()))

    def prune(self, now: float) -> None:
        """Drop samples older than the span, and clusters left with none."""
        cutoff = now - self.span
        for name in list(self.rings):
            ring = self.rings[name]
            while ring and ring[0].at < cutoff:
                ring.popleft()
            if not ring:
                del self.rings[name]

    def sample(self, entries: Iterable[NodeEntry], now: float | None = None) -> None:
        self.add(summarize(entries, time.time() if now is None else now))

    def series(self, clusters: Iterable[str] | None = None) -> dict[str, list[list[float | int]]]:
        """Each cluster's samples, oldest first, as [at, load, attendees, meetings, nodes_ok, nodes]."""
        names = self.rings if clusters is None else [c for c in clusters if c in self.rings]
        return {name: [s.as_list() for s in self.rings[name]] for name in names}

    def sample_count(self) -> int:
        return sum(len(ring) for ring in self.rings.values())

    async def run(self, entries: Callable[[], Iterable[NodeEntry]]) -> None:
        """Sample `entries()` (the load table's current entries) now and every `every` seconds."""
        while True:
            try:
                self.sample(entries())
            except Exception:  # a bad sample must not end the history
                log.exception("load history sample failed")
            await asyncio.sleep(self.every)
