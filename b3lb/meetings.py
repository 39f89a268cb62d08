"""The in-memory routing table: which node hosts meeting (secret, meetingID).

Kept in sync with the `meeting` table: this process updates it on create and end, and applies
the rows other instances (and its own poller) changed since its last read (runtime.py
refresh_meetings), so meetings placed elsewhere are seen too without reloading the whole table.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from b3lb.api.stored_create import PasswordHashes

PRUNE_AT_MOST = 20_000  # removal times dropped per call of forget_old_removals (a few milliseconds)
# meeting.failover_state (sql/0009_failover.sql): as created by its frontend; claimed by a failover that
# is re-creating it on its node; re-created by a failover (the node made up its own passwords)
AS_CREATED, RECREATING, RECREATED = 0, 1, 2


@dataclass(slots=True)
class MeetingRef:
    id: int
    secret_id: int
    meeting_id: str
    node_id: int
    nonce: uuid.UUID
    attendees: int = 0
    # monotonic time this process learnt of the meeting: protects fresh meetings from racing polls
    seen_at: float = field(default_factory=time.monotonic)
    # Whether its row holds the node's <meeting> element for getMeetings (b3lb/meeting_lists.py
    # reads it from there: 100,000 elements in memory would take some 150 MB).
    listed: bool = False
    # Counts, origin and the element's digest as last written to the database by this process's
    # poller, so unchanged meetings are not rewritten.
    polled: tuple[object, ...] | None = None
    # Learnt from another instance's Redis event, not from the database: a create must still
    # write (or find) its row rather than trust it (b3lb/events.py).
    via_event: bool = False
    # Monotonic time a create's answer failed to come (timeout after sending); 0.0: certain.
    # The node may or may not run it: the first poll of its node that starts later confirms it
    # (listed) or drops it (b3lb/poller.py), so nothing running on a node stays unknown.
    uncertain_since: float = 0.0
    creating: int = 0  # creates of it in flight in this process: no poll may drop it meanwhile
    info_tried: float = 0.0  # monotonic time getMeetings last fetched its element from the node
    # AS_CREATED, RECREATING or RECREATED (b3lb/api/failover.py): anything but AS_CREATED takes a
    # join off the fast path (it waits for the re-create, or its password becomes a role).
    failover_state: int = AS_CREATED
    # The original create's password hashes, read when a join or create first needs them.
    passwords: PasswordHashes | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> MeetingRef:
        return cls(
            id=row["id"],
            secret_id=row["secret_id"],
            meeting_id=row["meeting_id"],
            node_id=row["node_id"],
            nonce=row["nonce"],
            attendees=row["attendees"],
            listed=bool(row.get("listed")),
            failover_state=row.get("failover_state") or AS_CREATED,
        )


class MeetingTable:
    """Meetings by (secret, meetingID), with indexes by secret and by bare meetingID."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[int, str], MeetingRef] = {}
        self.by_id: dict[int, MeetingRef] = {}  # meeting row id -> its record
        self.by_secret: dict[int, dict[str, MeetingRef]] = {}
        # bare meetingID -> its meetings under all secrets (same ID, different tenants)
        self.by_meeting_id: dict[str, list[MeetingRef]] = {}
        self.by_node: dict[int, dict[tuple[int, str], MeetingRef]] = {}
        # secret id -> sum of its meetings' polled attendees, kept current for the limit checks
        self.attendees_by_secret: dict[int, int] = {}
        # meeting row id -> monotonic time this process removed it; a reload that started
        # before the removal must not bring it back
        self.removed: OrderedDict[int, float] = OrderedDict()  # oldest first: pruned from the front
        # (secret, meetingID) -> creates placing it right now, between their limit check and the
        # insert: concurrent creates must count these against the limits too
        self.placing: dict[tuple[int, str], int] = {}
        self._largest = 0  # size of the table when its indexes were last rebuilt (compact_if_shrunk)
        # (secret, meetingID) -> the failover of it under way in this process: every join of it
        # here awaits that one (b3lb/api/failover.py) instead of moving it again
        self.failing_over: dict[tuple[int, str], asyncio.Task[Any]] = {}
        # secret id -> a number that changes whenever one of its meetings is added, removed or gets
        # a new element: getMeetings answers stay cached while it holds (b3lb/meeting_lists.py)
        self.versions: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.by_key)

    def get(self, secret_id: int, meeting_id: str) -> MeetingRef | None:
        return self.by_key.get((secret_id, meeting_id))

    def add(self, ref: MeetingRef) -> None:
        old = self.by_key.get((ref.secret_id, ref.meeting_id))
        if old is not None:
            self.remove(old, forget=False)
        self.by_key[(ref.secret_id, ref.meeting_id)] = ref
        self.by_id[ref.id] = ref
        self.by_secret.setdefault(ref.secret_id, {})[ref.meeting_id] = ref
        self.by_meeting_id.setdefault(ref.meeting_id, []).append(ref)
        self.by_node.setdefault(ref.node_id, {})[(ref.secret_id, ref.meeting_id)] = ref
        self.attendees_by_secret[ref.secret_id] = self.attendees_by_secret.get(ref.secret_id, 0) + ref.attendees
        self.changed(ref.secret_id)

    def changed(self, secret_id: int) -> None:
        """A meeting of this secret came, went or got a new element: its getMeetings answer is stale."""
        self.versions[secret_id] = self.versions.get(secret_id, 0) + 1

    def remove(self, ref: MeetingRef, *, forget: bool = True) -> None:
        key = (ref.secret_id, ref.meeting_id)
        if self.by_key.get(key) is not ref:
            return
        if forget:
            self.removed[ref.id] = time.monotonic()
            self.removed.move_to_end(ref.id)
        del self.by_key[key]
        self.changed(ref.secret_id)
        if self.by_id.get(ref.id) is ref:
            del self.by_id[ref.id]
        self.attendees_by_secret[ref.secret_id] = self.attendees_by_secret.get(ref.secret_id, 0) - ref.attendees
        own = self.by_secret.get(ref.secret_id)
        if own is not None:
            own.pop(ref.meeting_id, None)
            if not own:
                del self.by_secret[ref.secret_id]
        same_id = self.by_meeting_id.get(ref.meeting_id, [])
        if ref in same_id:
            same_id.remove(ref)
        if not same_id:
            self.by_meeting_id.pop(ref.meeting_id, None)
        on_node = self.by_node.get(ref.node_id)
        if on_node is not None:
            on_node.pop(key, None)
            if not on_node:
                del self.by_node[ref.node_id]

    def set_attendees(self, ref: MeetingRef, attendees: int) -> None:
        """A poll's count for a meeting; keeps the per-secret sums right."""
        if self.by_key.get((ref.secret_id, ref.meeting_id)) is ref:
            self.attendees_by_secret[ref.secret_id] += attendees - ref.attendees
        ref.attendees = attendees

    def begin_placing(self, secret_id: int, meeting_id: str) -> None:
        key = (secret_id, meeting_id)
        self.placing[key] = self.placing.get(key, 0) + 1

    def end_placing(self, secret_id: int, meeting_id: str) -> None:
        key = (secret_id, meeting_id)
        left = self.placing.get(key, 0) - 1
        if left > 0:
            self.placing[key] = left
        else:
            self.placing.pop(key, None)

    def placing_for_secret(self, secret_id: int, other_than: str) -> int:
        """Meetings of this secret being placed right now, except `other_than` (a duplicate)."""
        return sum(1 for s, m in self.placing if s == secret_id and m != other_than)

    def nodes_hosting(self, meeting_id: str, other_than_secret: int) -> set[int]:
        """Nodes hosting this meetingID for another secret (never place a second copy there)."""
        return {r.node_id for r in self.by_meeting_id.get(meeting_id, ()) if r.secret_id != other_than_secret}

    def refs_on_node(self, node_id: int) -> list[MeetingRef]:
        return list(self.by_node.get(node_id, {}).values())

    def for_secret(self, secret_id: int) -> list[MeetingRef]:
        return list(self.by_secret.get(secret_id, {}).values())

    def count_for_secret(self, secret_id: int) -> int:
        return len(self.by_secret.get(secret_id, ()))

    def attendees_for_secret(self, secret_id: int) -> int:
        return self.attendees_by_secret.get(secret_id, 0)

    def apply_row(self, row: Mapping[str, Any], *, polling: bool) -> None:
        """One row the database changed since the last read. `polling`: this process polls, so
        its own copies of counts and elements are at least as new as the row's."""
        if row["id"] in self.removed:
            return  # ended here while the read was under way
        ref = self.by_id.get(row["id"])
        if ref is None or ref.node_id != row["node_id"] or ref.nonce != row["nonce"]:
            fresh = MeetingRef.from_row(row)  # new here, or restarted on another node
            if ref is not None and ref.node_id == fresh.node_id:
                _carry_over(ref, fresh)
            self.add(fresh)  # replaces a record under the same key
            return
        # Within one placement (nonce) the state only goes up: RECREATING -> RECREATED when the failover's
        # create answered; a read that began before that must not take it back.
        state = row.get("failover_state") or AS_CREATED
        if state > ref.failover_state:
            ref.failover_state = state
        if not polling:  # the row changed: its counts, and maybe its element
            self.set_attendees(ref, row["attendees"])
            ref.listed = bool(row["listed"])
            self.changed(ref.secret_id)

    def forget_ids(self, ids: Iterable[int]) -> list[MeetingRef]:
        """Meetings the database no longer holds (ended anywhere); returns those that were known."""
        gone = []
        for meeting_row_id in ids:
            ref = self.by_id.get(meeting_row_id)
            if ref is not None:
                self.remove(ref)
                gone.append(ref)
        return gone

    def forget_old_removals(self, older_than: float, at_most: int = PRUNE_AT_MOST) -> None:
        """Drop removal times older than `older_than` seconds, at most `at_most` of them per call
        (a whole fleet may end at once: the rest go next time, a longer memory does no harm)."""
        cutoff = time.monotonic() - older_than
        removed = self.removed
        for _ in range(min(at_most, len(removed))):
            meeting_row_id, removed_at = removed.popitem(last=False)
            if removed_at >= cutoff:
                removed[meeting_row_id] = removed_at
                removed.move_to_end(meeting_row_id, last=False)
                break

    def compact_if_shrunk(self) -> bool:
        """Rebuild the indexes once the table has shrunk to half of its largest size since the last
        rebuild (a dict keeps the table of its largest size; copying it costs time per survivor)."""
        self._largest = max(self._largest, len(self.by_key))
        if len(self.by_key) * 2 > self._largest:
            return False
        self._largest = len(self.by_key)
        self.by_key, self.by_id, self.by_secret = dict(self.by_key), dict(self.by_id), dict(self.by_secret)
        self.by_meeting_id, self.by_node = dict(self.by_meeting_id), dict(self.by_node)
        self.attendees_by_secret = dict(self.attendees_by_secret)
        return True


def _carry_over(previous: MeetingRef, ref: MeetingRef) -> None:
    """What this process learnt of a meeting that a reload must not throw away."""
    # (not `creating`: the create in flight counts down on the record it counted up)
    ref.seen_at, ref.polled, ref.uncertain_since = previous.seen_at, previous.polled, previous.uncertain_since
    ref.info_tried = previous.info_tried
    ref.listed = ref.listed or previous.listed
