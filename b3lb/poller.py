"""The fleet watcher: polls every node's load endpoint and getMeetings, then updates the load
table, node health, meeting counts and the getMeetings cache, with one batched statement each.

Nodes are polled concurrently (bounded by `poller.concurrency`), each with its own timeout, so
a slow node delays nobody. XML is parsed in small pieces between network waits, which keeps
the API responsive during a cycle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import asyncpg
from lxml import etree

from b3lb import bbbxml
from b3lb.api.forward import node_url
from b3lb.balancer import NodeEntry
from b3lb.bytebudget import ByteBudget
from b3lb.columns import ERROR_SIZE, ORIGIN_SIZE, fit_count, fit_text, fit_xml_text
from b3lb.db import Q
from b3lb.meeting_sync import GONE_KEEP_SECONDS
from b3lb.meetings import MeetingRef
from b3lb.memory import release_free_memory, settle_long_lived
from b3lb.nodeclient import CONNECT, LOCAL, RESET, NodeRequestError, NodeResponse
from b3lb.outage import is_database_unavailable
from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.poller")
# After a cycle that ended this many meetings, and at least TRIM_AFTER_SHARE of those still routed,
# freed memory goes back to the OS (b3lb/memory.py). Not after every cycle of a large fleet's
# ordinary turnover: malloc_trim holds the C heap's lock while it works (20-30 ms with 100,000
# meetings), and every allocation of the API waits for it meanwhile (issue 12, the `scale` lag).
TRIM_AFTER_ENDED = 1000
TRIM_AFTER_SHARE = 0.1
WRITE_BATCH = 1000  # meeting rows per UPDATE statement
LET_GO_STEP = 500  # ended meetings counted or freed between two looks at the clock (about 0.2 ms)
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
# A failed API call asks for an extra poll of its node, at most this often per node (seconds).
PROBE_MIN_GAP = 2.0
# Bytes of node answers a cycle holds at once, at most: 100 nodes with 1,000 meetings answer some
# 1.5 MB each, and all of them in flight together doubled the process's memory (issue 12).
ANSWERS_IN_FLIGHT = 32 * 1024 * 1024
# Failures of a cycle's poll that an extra poll follows at once (poller.probe_failed): the node refused or
# dropped the connection, as a dead one does. A slow answer (timeout) waits for the next cycle: under load
# a second try at once would often fail too and put a merely busy node in error.
PROBED_KINDS = frozenset({CONNECT, RESET})
# Seconds the load file may take at least, whatever the getMeetings call before it left of poller.timeout.
LOAD_TIMEOUT_MIN = 1.0
ELEMENT_BYTES = 1536  # a <meeting> element with a few attendees, for estimating an answer's size


@dataclass(slots=True)
class MeetingSample:
    ref: MeetingRef
    counts: tuple[int, int, int, int, int]  # attendees, listeners, voice, videos, moderators
    origin: str
    origin_server_name: str
    xml: bytes | None  # the element to store; None when it is what the row holds already
    digest: bytes  # bbbxml.element_digest of the element


@dataclass(slots=True)
class NodePoll:
    entry: NodeEntry
    ok: bool = False
    error: str = ""
    local: bool = False  # failed inside b3lb (no free connection slot): says nothing about the node
    kind: str = ""  # of the failure (nodeclient's kinds: connect, reset, timeout, answer, local)
    cpu_load: float | None = None  # percent; None: the load endpoint gave nothing usable
    meetings: int = 0
    attendees: int = 0
    samples: list[MeetingSample] = field(default_factory=list)
    listed: set[str] = field(default_factory=set)
    # Monotonic time its getMeetings was sent: a meeting the answer does not list is judged against
    # this, not against the cycle's end (a cycle of many nodes may take longer than the grace).
    started: float = 0.0


def parse_load(body: bytes) -> float | None:
    """The node's load file: an integer 0..10000 ("5713\\n"), as a percentage; None if unusable."""
    text = body.split(b"\n", 1)[0].strip()
    try:
        value = int(text)
    except ValueError:
        return None
    return min(max(value, 0), 10000) / 100.0


_LISTED = "meetings/meeting[not(isBreakout='true')]"
_MEETING_IDS = etree.XPath(f"{_LISTED}/meetingID/text()", smart_strings=True)
_ATTENDEES = etree.XPath(f"sum({_LISTED}/participantCount)")


def _sum_counts(root: etree._Element) -> int:
    """The slow way, for a node whose counts XPath could not add up."""
    listed = (m for m in root.iterfind("meetings/meeting") if m.findtext("isBreakout") != "true")
    return sum(_count(m, "participantCount") for m in listed)


def _count(meeting: etree._Element, tag: str) -> int:
    try:
        return int(meeting.findtext(tag) or 0)
    except ValueError:
        return 0


class Poller:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.config = runtime.config.poller
        self.cycles = 0
        self.last_duration = 0.0
        self.last_cpu = 0.0
        self.poll_seconds: dict[int, float] = {}  # node id -> duration of its last poll
        self._ended = 0  # meetings the last cycle found ended
        self._probing: set[int] = set()
        self._probed_at: dict[int, float] = {}
        self._store_errors: dict[str, str] = {}  # store step -> its last error, logged on change
        # Nodes whose error state this process decided but could not store yet: a reload of the
        # node table must keep the in-memory state, or a recovery would be undone (issue 9.4).
        self.unstored_health: set[int] = set()
        # Changed meetings of this cycle not written yet: (record, what its row gets, element). Written
        # WRITE_BATCH at a time while the cycle goes on, so that a first cycle over 100,000 meetings
        # never holds all their elements at once (some 150 MB).
        self._unwritten: list[tuple[MeetingRef, tuple[object, ...], bytes]] = []
        self._writing = asyncio.Lock()
        self.answer_budget = ByteBudget(ANSWERS_IN_FLIGHT)
        self._answer_sizes: dict[int, int] = {}  # node id -> bytes of its last getMeetings answer

    async def poll_once(self) -> list[NodePoll]:
        """One full cycle over every node; returns the per-node results."""
        started, cpu_started = time.perf_counter(), time.process_time()
        entries = list(self.runtime.loads.nodes.values())
        polls: list[NodePoll | None] = [None] * len(entries)
        queue = iter(range(len(entries)))  # shared by the workers: each node is taken once

        async def worker() -> None:
            for index in queue:
                async with self.answer_budget.take(self._expected_size(entries[index])):
                    polls[index] = await self._poll_timed(entries[index], cycle=True)

        # `concurrency` workers rather than a task per node: a thousand tasks and semaphore
        # hand-overs cost more than the polls' own Python work
        await asyncio.gather(*(worker() for _ in range(min(self.config.concurrency, len(entries)))))
        results = [poll for poll in polls if poll is not None]
        await self._apply(results)
        if self._ended >= TRIM_AFTER_ENDED:
            self.runtime.meetings.compact_if_shrunk()  # it notes the table's largest size, so ask often
        if self._ended >= max(TRIM_AFTER_ENDED, TRIM_AFTER_SHARE * len(self.runtime.meetings)):  # much freed at once
            # in a thread: trimming a large heap takes tens of milliseconds (the GIL is released meanwhile)
            await asyncio.get_running_loop().run_in_executor(None, release_free_memory)
        settle_long_lived()
        self.cycles += 1
        self.last_duration = time.perf_counter() - started
        self.last_cpu = time.process_time() - cpu_started
        log.debug("poll cycle", extra={"nodes": len(entries), "seconds": round(self.last_duration, 3)})
        return results

    def _expected_size(self, entry: NodeEntry) -> int:
        """Bytes the node's answer will take: the last one's size, else guessed from its meetings."""
        size = self._answer_sizes.get(entry.node.id)
        if size is not None:
            return size
        routed = len(self.runtime.meetings.by_node.get(entry.node.id, ()))
        return (max(entry.node.meetings, routed) + 1) * ELEMENT_BYTES

    def probe_soon(self, node_id: int, reason: str) -> None:
        """Poll one node now, outside the cycle, because a call to it failed (`reason`).

        Only its health is judged (the same hysteresis as a cycle's poll); meetings and lists wait
        for the next cycle. At most one probe per node at a time and one per PROBE_MIN_GAP."""
        entry = self.runtime.loads.nodes.get(node_id)
        now = time.monotonic()
        if entry is None or node_id in self._probing or now - self._probed_at.get(node_id, -1e9) < PROBE_MIN_GAP:
            return
        self._probing.add(node_id)
        self._probed_at[node_id] = now
        self.runtime.add_task("node probe", self._probe(entry))

    async def _probe(self, entry: NodeEntry) -> None:
        try:
            result = await self._poll_timed(entry)
            if result.cpu_load is not None:
                entry.node.cpu_load = result.cpu_load
            if not result.ok and not result.local:
                log.info("extra poll of node %s failed: %s", entry.node.slug, result.error)
            if self._judge(result):
                entry.recompute()
                self.unstored_health.add(entry.node.id)
                try:
                    await self.runtime.pool.execute(Q.node_set_error, entry.node.id, entry.node.has_errors)
                    self.unstored_health.discard(entry.node.id)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                    log.warning("cannot store error state of node %s: %s", entry.node.slug, exc)  # next cycle will
        finally:
            self._probing.discard(entry.node.id)

    def _judge(self, result: NodePoll) -> bool:
        """Count one poll towards the node's health; True when its error state flipped."""
        loads, node_id = self.runtime.loads, result.entry.node.id
        if result.ok:
            return loads.record_success(node_id)
        if result.local:  # b3lb's own wait for a connection slot is not the node's failure
            return False
        return loads.record_failure(node_id, result.error)

    async def _poll_timed(self, entry: NodeEntry, *, cycle: bool = False) -> NodePoll:
        """One node's poll; `cycle`: part of a cycle, whose changed meetings are written (a probe's are not)."""
        started = time.perf_counter()
        try:
            result = await self._poll_node(entry)
            if cycle and result.ok:
                self._queue_changes(result)
                if len(self._unwritten) >= WRITE_BATCH:
                    await self._write_changes()
            return result
        except Exception as exc:  # a bug must cost one node's poll, not the cycle
            log.exception("poll of node %s failed unexpectedly", entry.node.slug)
            return NodePoll(entry, error=repr(exc))
        finally:
            self.poll_seconds[entry.node.id] = time.perf_counter() - started

    async def _poll_node(self, entry: NodeEntry) -> NodePoll:
        result = NodePoll(entry)
        timeout = self.config.timeout
        fetch = self.runtime.nodes.fetch
        started = result.started = time.monotonic()
        try:
            meetings: NodeResponse | NodeRequestError = await fetch(
                node_url(entry, "getMeetings", []), timeout=timeout, purpose="poll"
            )
        except NodeRequestError as exc:
            meetings = exc
            result.kind = getattr(exc, "kind", "")
            result.local = result.kind == LOCAL
        # The load file after the meetings, on the same kept-alive connection: one connection per node
        # rather than two (each TLS connection holds some 100 KB and costs a handshake). A node that did
        # not answer is not asked again.
        if not isinstance(meetings, NodeRequestError):
            try:
                load = await fetch(
                    entry.node.load_url,
                    purpose="poll",
                    timeout=max(LOAD_TIMEOUT_MIN, timeout - (time.monotonic() - started)),
                )
                if load.code == 200:
                    result.cpu_load = parse_load(load.body)
            except NodeRequestError:
                pass
        if isinstance(meetings, NodeRequestError):
            result.error = str(meetings)
            return result
        if meetings.code != 200:
            result.error = f"HTTP {meetings.code}"
            return result
        self._answer_sizes[entry.node.id] = len(meetings.body)
        try:
            scanned = bbbxml.scan_iter(meetings.body)
        except ValueError:  # not a SUCCESS document: lxml below says what it is instead
            scanned = None
        if scanned is not None and await self._read_scanned(result, meetings.body, scanned):
            result.ok = True
            return result
        try:
            root = etree.fromstring(meetings.body, _PARSER)
        except (etree.XMLSyntaxError, ValueError) as exc:
            result.error = f"unparsable XML: {exc}"
            return result
        if root.findtext("returncode") != "SUCCESS" or root.find("error") is not None:
            result.error = f"FAILED: {root.findtext('messageKey') or root.findtext('message') or 'no message'}"
            return result
        result.ok = True
        self._read_meetings(result, root)
        return result

    async def _read_scanned(
        self, result: NodePoll, body: bytes, scanned: Iterator[bbbxml.ScannedMeeting | None]
    ) -> bool:
        """The fast path: meetings cut from the bytes; details only for the ones b3lb routes here.
        False (and `result` untouched) when the bytes leave BBB's template: lxml reads them then.
        Holds the loop's background slices (b3lb/slices.py): a node with 1,000 meetings takes some 10 ms."""
        node_id = result.entry.node.id
        by_id = self.runtime.meetings.by_meeting_id
        found, count, attendees, listed, samples = 0, 0, 0, set(), []
        async with self.runtime.slices.held() as slices:
            for found, meeting in enumerate(scanned, 1):
                if meeting is None:
                    return False
                if found % 50 == 0 and slices.due():
                    await slices.pause()
                if meeting.is_breakout:
                    continue  # breakout rooms count for neither the node nor getMeetings
                count += 1
                attendees += meeting.participants
                listed.add(meeting.meeting_id)
                refs = by_id.get(meeting.meeting_id)
                owned = [r for r in refs if r.node_id == node_id] if refs else None
                if not owned:
                    continue
                digest = meeting.digest()
                for ref in owned:
                    # Most meetings look as they did one poll ago, and that element is what their row holds
                    # (ref.polled ends with its digest): nothing to read, keep or write
                    if ref.polled is not None and ref.polled[-1] == digest:
                        if ref.uncertain_since:  # its create's fate is decided by this poll
                            counts, (origin, server) = ref.polled[:5], ref.polled[5:7]
                            samples.append(MeetingSample(ref, counts, origin, server, None, digest))  # type: ignore[arg-type]
                        continue
                    xml = meeting.xml
                    counts, origin, server = bbbxml.details(xml)
                    samples.append(MeetingSample(ref, counts, origin, server, xml, digest))
        if not bbbxml.template_holds(body, found):
            return False
        result.meetings, result.attendees, result.listed, result.samples = count, attendees, listed, samples
        return True

    def _read_meetings(self, result: NodePoll, root: etree._Element) -> None:
        """Node totals in C (XPath); Python only touches the meetings b3lb routes to this node."""
        node_id = result.entry.node.id
        by_id = self.runtime.meetings.by_meeting_id
        ids = _MEETING_IDS(root)  # breakout rooms count for neither the node nor getMeetings
        total = _ATTENDEES(root)
        result.meetings = len(ids)
        result.attendees = int(total) if total == total else _sum_counts(root)  # NaN: a non-number
        result.listed = {str(i) for i in ids}
        for meeting_id in ids:
            refs = by_id.get(meeting_id)
            if refs is None:
                continue
            owned = [r for r in refs if r.node_id == node_id]
            if owned:
                self._sample(result, meeting_id.getparent().getparent(), owned)

    def _sample(self, result: NodePoll, meeting: etree._Element, owned: list[MeetingRef]) -> None:
        meta = meeting.find("metadata")
        counts = (
            _count(meeting, "participantCount"),
            _count(meeting, "listenerCount"),
            _count(meeting, "voiceParticipantCount"),
            _count(meeting, "videoCount"),
            _count(meeting, "moderatorCount"),
        )
        meeting.tail = None
        if meta is not None:
            bbbxml.drop_private(meta)  # the set's nonce is b3lb's, never the tenant's to read
        xml = etree.tostring(meeting, encoding="utf-8", xml_declaration=False)
        origin = meta.findtext("bbb-origin") or "" if meta is not None else ""
        server = meta.findtext("bbb-origin-server-name") or "" if meta is not None else ""
        digest = bbbxml.element_digest(xml)
        for ref in owned:
            result.samples.append(MeetingSample(ref, counts, origin, server, xml, digest))

    def _queue_changes(self, result: NodePoll) -> None:
        """Queue the rows of the node's changed meetings; their samples keep no element."""
        for sample in result.samples:
            if sample.xml is None:
                continue
            counts = tuple(map(fit_count, sample.counts))  # cut to fit the columns: a tenant controls metadata
            origin, server = fit_text(sample.origin, ORIGIN_SIZE), fit_text(sample.origin_server_name, ORIGIN_SIZE)
            polled = (*counts, origin, server, sample.digest)
            if polled != sample.ref.polled:
                self._unwritten.append((sample.ref, polled, sample.xml))
            sample.xml = None

    async def _write_changes(self, *, everything: bool = False) -> None:
        """Write queued meeting rows, WRITE_BATCH per statement; a row is marked written (ref.polled)
        once stored. On failure the rows are dropped: next cycle finds them changed again."""
        async with self._writing:
            while len(self._unwritten) >= (1 if everything else WRITE_BATCH):
                batch = self._unwritten[:WRITE_BATCH]
                del self._unwritten[:WRITE_BATCH]
                try:
                    refused = await self._write_batch(batch)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                    self._store_failed(exc)
                    self._unwritten.clear()  # the database is away: this cycle writes no more
                    return
                meetings = self.runtime.meetings
                for ref, polled, _ in batch:
                    if ref.id not in refused:
                        ref.polled, ref.listed = polled, True
                        meetings.changed(ref.secret_id)  # getMeetings reads the new element from the row

    async def _write_batch(self, batch: list[tuple[MeetingRef, tuple[object, ...], bytes]]) -> set[object]:
        """The ids of the rows not written (all of them when the database refused the statement)."""
        rows = [(ref.id, *polled[:-1], fit_xml_text(xml)) for ref, polled, xml in batch]
        refused: list[object] = []

        async def write(conn: asyncpg.Connection) -> None:
            refused.extend(await self._store_rows(conn, Q.meetings_update, rows))

        async with self.runtime.pool.acquire() as conn:
            if not await self._store_step(conn, "meetings", write):
                return {row[0] for row in rows}
        return set(refused)

    def _store_failed(self, exc: BaseException) -> None:
        if is_database_unavailable(exc):  # once per outage, not once per cycle
            self.runtime.poll_store.failed(exc)
        else:
            log.warning("cannot store poll results: %s", exc)

    async def _apply(self, results: list[NodePoll]) -> None:
        """Fold one cycle into memory first (the API sees it at once), then the database.

        Cut into the loop's background slices (b3lb/slices.py), so a cycle over 100,000 meetings never
        stalls the API."""
        grace = self.config.meeting_grace
        now = time.monotonic()
        await self._write_changes(everything=True)
        node_rows, vanished, failed = [], [], []
        async with self.runtime.slices.held() as slices:
            for result in results:
                entry, node = result.entry, result.entry.node
                if result.cpu_load is not None:
                    node.cpu_load = result.cpu_load
                self._judge(result)
                if result.ok:
                    node.attendees, node.meetings = fit_count(result.attendees), fit_count(result.meetings)
                    entry.pending_meetings = 0  # the poll now sees what we placed
                    entry.last_error = ""
                    vanished.extend(self._update_meetings(result, now, grace))
                    # Done with: the cycle's end collects the young generation (settle_long_lived), and
                    # 100 nodes' sets of 1,000 ids made that collection take 40 ms (issue 12, scale)
                    result.listed, result.samples = set(), []
                else:
                    log.info("poll of node %s failed: %s", node.slug, result.error)
                    if self.config.probe_failed and result.kind in PROBED_KINDS and not node.has_errors:
                        failed.append(result)  # the next failure need not wait an interval
                entry.recompute()
                node_rows.append(
                    (
                        node.id,
                        node.cpu_load,
                        node.attendees,
                        node.meetings,
                        node.has_errors,
                        result.ok,
                        fit_text(result.error, ERROR_SIZE),
                    )
                )
                await slices.tick()
        self._ended = len(vanished)
        await self._store(node_rows, vanished)
        await self._let_go(vanished)
        for result in failed:  # after the store: its node rows must not overwrite a probe's verdict
            self.probe_soon(result.entry.node.id, result.error)

    def _update_meetings(
        self,
        result: NodePoll,
        now: float,
        grace: float,
    ) -> list[MeetingRef]:
        """Counts of the node's meetings; the ones its answer does not list are gone, unless the answer
        may predate them: asked for within `grace` seconds of their create (or of this process
        learning of them), or, for a create whose answer never came, asked for before it gave up."""
        asked = result.started or now
        for sample in result.samples:
            ref = sample.ref
            self.runtime.meetings.set_attendees(ref, fit_count(sample.counts[0]))
            if ref.uncertain_since:
                ref.uncertain_since = 0.0
                log.info("meeting %s: its unanswered create did reach node %s", ref.id, result.entry.node.slug)
        gone = []
        for ref in self.runtime.meetings.refs_on_node(result.entry.node.id):
            if ref.meeting_id in result.listed or ref.creating:
                continue
            if ref.uncertain_since:  # wait for a poll that began after the create gave up
                if asked <= ref.uncertain_since:
                    continue
                log.info("meeting %s: its unanswered create never reached node %s", ref.id, result.entry.node.slug)
            elif asked - ref.seen_at <= grace:
                continue
            self.runtime.meetings.remove(ref)
            self.runtime.announce("ended", ref)
            gone.append(ref)
        return gone

    async def _store(self, node_rows: list[tuple[object, ...]], vanished: list[MeetingRef]) -> None:
        pool = self.runtime.pool
        ended: list[asyncpg.Record] = []

        async def nodes(conn: asyncpg.Connection) -> None:
            await conn.execute(Q.nodes_update, *map(list, zip(*node_rows, strict=True)))

        async def gone(conn: asyncpg.Connection) -> None:
            for at in range(0, len(vanished), WRITE_BATCH):
                batch = vanished[at : at + WRITE_BATCH]
                ended.extend(await conn.fetch(Q.meetings_vanished, [r.id for r in batch], [r.nonce for r in batch]))

        async def prune(conn: asyncpg.Connection) -> None:
            await conn.execute(Q.meetings_gone_prune, GONE_KEEP_SECONDS)

        async def stats(conn: asyncpg.Connection) -> None:
            await conn.execute(Q.stats_refresh)

        steps = {
            "nodes": (node_rows, nodes),
            "ended meetings": (vanished, gone),
            "pruning": (True, prune),
            "stats": (True, stats),
        }
        try:
            async with pool.acquire() as conn, conn.transaction():
                stored = {
                    name: await self._store_step(conn, name, step) for name, (todo, step) in steps.items() if todo
                }
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self.unstored_health.update(row[0] for row in node_rows)  # type: ignore[misc]
            self._store_failed(exc)
            return
        self.runtime.poll_store.succeeded()
        if stored.get("nodes"):
            self.unstored_health.difference_update(row[0] for row in node_rows)
        else:
            self.unstored_health.update(row[0] for row in node_rows)  # type: ignore[misc]
        async with self.runtime.slices.held() as slices:
            while ended:  # all meetings of a fleet may end in one cycle: counted and let go in steps
                for row in ended[-LET_GO_STEP:]:
                    self.runtime.counters.meeting_ended(row["secret_id"], row["seconds"])
                del ended[-LET_GO_STEP:]
                await slices.tick()

    async def _let_go(self, refs: list[MeetingRef]) -> None:
        """Drop the ended meetings' records a step at a time: this list holds their last references,
        and 100,000 freed at once (the cycle's end in the scale benchmark's end-all) held the loop 58 ms."""
        async with self.runtime.slices.held() as slices:
            while refs:
                del refs[-LET_GO_STEP:]
                await slices.tick()

    async def _store_step(
        self, conn: asyncpg.Connection, name: str, step: Callable[[asyncpg.Connection], Awaitable[None]]
    ) -> bool:
        """One part of a cycle's writes in its own savepoint: a value the database refuses spoils
        that part only (logged when the error starts or changes), never the whole cycle."""
        try:
            async with conn.transaction():
                await step(conn)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.ProgramLimitExceededError) as exc:
            if self._store_errors.get(name) != str(exc):
                log.warning("poll results: %s not stored: %s", name, exc)
            self._store_errors[name] = str(exc)
            return False
        if self._store_errors.pop(name, None) is not None:
            log.info("poll results: %s stored again", name)
        return True

    @staticmethod
    async def _store_rows(conn: asyncpg.Connection, query: str, rows: list[tuple[object, ...]]) -> list[object]:
        """Rows in one statement; if the database refuses the batch, row by row without the bad ones.
        Returns the ids (first values) of the rows it refused."""
        try:
            async with conn.transaction():
                await conn.execute(query, *map(list, zip(*rows, strict=True)))
            return []
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            log.warning("a batch of %d rows was refused (%s): storing them one by one", len(rows), exc)
        refused = []
        for row in rows:
            try:
                async with conn.transaction():
                    await conn.execute(query, *([value] for value in row))
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                log.warning("row %s not stored: %s", row[0], exc)
                refused.append(row[0])
        return refused
