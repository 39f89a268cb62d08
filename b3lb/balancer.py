"""The in-memory load table and node choice for new meetings.

Each node's load is computed from its last poll (attendees, meetings, CPU) plus the weight of the
meetings placed on it since then, so a burst of creates spreads over the fleet before the next
poll sees them. Choosing a node is a scan of a small list: no SQL on the create path.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

from b3lb.loadscore import load_score
from b3lb.models import Cluster, Node

log = logging.getLogger("b3lb.balancer")

CREATE_BACKOFF = 5.0  # seconds a node is passed over after its first failed create; doubled per failure
CREATE_BACKOFF_MAX = 300.0


@dataclass(slots=True)
class NodeEntry:
    node: Node
    cluster: Cluster
    # Meetings placed here since the last poll: each counts as +1 meeting and +1 attendee.
    pending_meetings: int = 0
    failures: int = 0  # consecutive failed requests/polls
    successes: int = 0  # consecutive good ones while in error
    last_error: str = ""
    last_ok: float = 0.0  # time.time() of the last good poll
    load: float = 0.0
    api_url: str = ""  # the node's API base, built once rather than on every forwarded call
    # Placement back-off after creates the node certainly failed (its polls may look fine):
    # new meetings go elsewhere until `avoid_until` (monotonic) unless no other node is left.
    # Local to this process and not health: the poller alone decides has_errors.
    create_faults: int = 0
    avoid_until: float = 0.0
    call_error: str = ""  # the last failed call's reason, so a failing node logs once, not per call

    def __post_init__(self) -> None:
        self.api_url = self.node.api_url

    def recompute(self) -> None:
        n, c = self.node, self.cluster
        self.load = load_score(
            attendees=n.attendees + self.pending_meetings,
            meetings=n.meetings + self.pending_meetings,
            cpu_load=n.cpu_load,
            maintenance=n.maintenance or c.maintenance,
            has_errors=n.has_errors,
            a_factor=c.load_a_factor,
            m_factor=c.load_m_factor,
            iterations=c.load_cpu_series_iteratations,
            cpu_maximum=c.load_cpu_maximum,
        )

    @property
    def in_maintenance(self) -> bool:
        """The node's own maintenance or its cluster's (sql/0011): either keeps new meetings away."""
        return self.node.maintenance or self.cluster.maintenance

    @property
    def available(self) -> bool:
        return not self.in_maintenance and not self.node.has_errors

    def create_failed(self) -> None:
        if self.avoid_until > time.monotonic():
            return  # failures of creates sent in the same burst count once per back-off step
        self.create_faults += 1
        backoff = min(CREATE_BACKOFF_MAX, CREATE_BACKOFF * 2 ** min(self.create_faults - 1, 16))
        self.avoid_until = time.monotonic() + backoff

    def create_succeeded(self) -> None:
        if self.create_faults:
            self.create_faults, self.avoid_until = 0, 0.0


@dataclass
class LoadTable:
    nodes: dict[int, NodeEntry] = field(default_factory=dict)
    # cluster group id -> node ids of all clusters in the group
    group_nodes: dict[int, list[int]] = field(default_factory=dict)
    error_after: int = 2
    recover_after: int = 2
    # Changes whenever a node comes, goes, or goes into or out of error: what getMeetings lists
    # depends on it (b3lb/meeting_lists.py)
    health_version: int = 0
    _health: frozenset[tuple[int, bool]] = frozenset()

    def rebuild(
        self,
        clusters: Iterable[Cluster],
        nodes: Iterable[Node],
        group_clusters: Iterable[tuple[int, int]],
        *,
        keep_live: bool = True,
        keep_health: Container[int] = (),
    ) -> None:
        """Load configuration from the database, keeping the live fields of known nodes.

        With keep_live (this process polls or places meetings), pending weight and health
        counters survive. has_errors comes from the database, except for the nodes in keep_health:
        the poller's verdicts it could not store yet, which a reload must not undo.
        """
        cluster_by_id = {c.id: c for c in clusters}
        entries: dict[int, NodeEntry] = {}
        for node in nodes:
            cluster = cluster_by_id.get(node.cluster_id)
            if cluster is None:
                continue
            old = self.nodes.get(node.id)
            entry = NodeEntry(node=node, cluster=cluster)
            if old is not None and keep_live:
                entry.pending_meetings = old.pending_meetings
                entry.failures, entry.successes = old.failures, old.successes
                entry.last_error, entry.last_ok = old.last_error, old.last_ok
                entry.create_faults, entry.avoid_until = old.create_faults, old.avoid_until
                entry.call_error = old.call_error
                if node.id in keep_health:
                    node.has_errors = old.node.has_errors
            entry.recompute()
            entries[node.id] = entry
        groups: dict[int, list[int]] = {}
        cluster_nodes: dict[int, list[int]] = {}
        for entry in entries.values():
            cluster_nodes.setdefault(entry.cluster.id, []).append(entry.node.id)
        for group_id, cluster_id in group_clusters:
            groups.setdefault(group_id, []).extend(cluster_nodes.get(cluster_id, []))
        self.nodes = entries
        self.group_nodes = groups
        health = frozenset((node_id, entry.node.has_errors) for node_id, entry in entries.items())
        if health != self._health:
            self._health = health
            self.health_version += 1

    def choose(self, cluster_group_id: int, exclude: Mapping[int, object] | None = None) -> NodeEntry | None:
        """The least loaded available node of the group, random among equals; None if none.

        Runs on every create: a node more loaded than the best so far is passed over before any
        other test (with 100 nodes that is most of them)."""
        nodes = self.nodes
        best: list[NodeEntry] = []
        best_load = 0.0
        avoided: list[NodeEntry] = []
        now = 0.0
        for node_id in self.group_nodes.get(cluster_group_id, ()):
            entry = nodes[node_id]
            load = entry.load
            if load < 0 or (best and load > best_load):  # unavailable, or cannot win (best stays non-empty)
                continue
            if exclude and node_id in exclude:
                continue
            if entry.avoid_until:
                now = now or time.monotonic()
                if entry.avoid_until > now:
                    avoided.append(entry)
                    continue
            if not best or load < best_load:
                best, best_load = [entry], load
            else:  # load == best_load
                best.append(entry)
        if not best:  # only nodes that failed creates lately: the least loaded of them
            return min(avoided, key=lambda e: e.load) if avoided else None
        return best[0] if len(best) == 1 else random.choice(best)

    def placed(self, node_id: int) -> None:
        entry = self.nodes.get(node_id)
        if entry is not None:
            entry.pending_meetings += 1
            entry.recompute()

    def unplaced(self, node_id: int) -> None:
        entry = self.nodes.get(node_id)
        if entry is not None and entry.pending_meetings > 0:
            entry.pending_meetings -= 1
            entry.recompute()

    def record_failure(self, node_id: int, reason: str) -> bool:
        """Count a failed request or poll; True when the node just went into error."""
        entry = self.nodes.get(node_id)
        if entry is None:
            return False
        entry.failures += 1
        entry.successes = 0
        entry.last_error = reason
        if not entry.node.has_errors and entry.failures >= self.error_after:
            entry.node.has_errors = True
            entry.recompute()
            self.health_version += 1
            log.warning(
                "node %s goes to error after %d failures: %s", entry.node.slug, entry.failures, reason
            )
            return True
        return False

    def record_success(self, node_id: int) -> bool:
        """Count a good poll; True when the node just came back from error."""
        entry = self.nodes.get(node_id)
        if entry is None:
            return False
        entry.failures = 0
        entry.last_ok = time.time()
        if not entry.node.has_errors:
            return False
        entry.successes += 1
        if entry.successes >= self.recover_after:
            entry.node.has_errors = False
            entry.successes = 0
            entry.recompute()
            self.health_version += 1
            log.info("node %s recovered after %d good polls", entry.node.slug, self.recover_after)
            return True
        return False
