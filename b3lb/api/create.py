"""`create`: place a new meeting (or find the existing one), rewrite, forward, answer as the node.

Node choice reads the in-memory load table; the only SQL is the insert of the routing record
(and, for tenants with a default slide, reading that slide).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from pathlib import PurePosixPath
from typing import TYPE_CHECKING
from xml.sax.saxutils import quoteattr

import asyncpg

from b3lb.api import params as p
from b3lb.api import stored_create
from b3lb.api.forward import call_node, node_suspected, succeeded
from b3lb.api.xml import MEETING_ID_SIZE, MISSING_MEETING_ID, NAME_SIZE, ApiResult, failed, limit_reached, no_node
from b3lb.balancer import NodeEntry
from b3lb.db import Q
from b3lb.meetings import AS_CREATED, MeetingRef
from b3lb.runtime import Runtime
from b3lb.tenancy import SecretContext

if TYPE_CHECKING:
    from b3lb.api.handler import ApiRequest

log = logging.getLogger("b3lb.api")

RECORDSET_TAG = "meta_b3lb-recordset"
READY_URL = "meta_bbb-recording-ready-url"
END_CALLBACK = "meta_endCallbackUrl"
RECORD_FLAGS = ("record", "autoStartRecording", "allowStartStopRecording")
_END_CALLBACK_LOWER = END_CALLBACK.lower()
_VOICE = frozenset({"dialNumber", "voiceBridge"})  # removed: the node assigns its own
# A create sent but not answered in time: the node may have made the meeting, so a retry of the
# same create goes to that node again (never a second copy elsewhere).
UNCERTAIN = failed(
    "nodeUnavailable",
    "The BigBlueButton server did not answer in time; the meeting may have been created. Retry the create.",
)
EMBED_LIMIT = 768_000  # bytes of slide embedded as base64 (1,024,000 characters)


async def create(runtime: Runtime, req: ApiRequest) -> ApiResult:
    meeting_id = req.get("meetingID")
    if not meeting_id:
        return MISSING_MEETING_ID
    if not 2 <= len(meeting_id) <= 100:
        return MEETING_ID_SIZE
    name = req.get("name") or ""
    if not 2 <= len(name) <= 256:
        return NAME_SIZE
    ctx = req.ctx
    failing_over = runtime.meetings.failing_over.get((ctx.secret.id, meeting_id))
    if failing_over is not None:  # a join here is moving it off a node in error: go where it went
        with contextlib.suppress(Exception):  # (that join reports its failure; this create goes on)
            await asyncio.shield(failing_over)
    # Memory only: a meeting another instance created just now shows up as the insert's conflict.
    # A meeting learnt from a Redis event is not trusted for a create: the row decides.
    ref = runtime.meetings.get(ctx.secret.id, meeting_id)
    if ref is not None and ref.via_event:
        ref = None
    entry = runtime.loads.nodes.get(ref.node_id) if ref is not None else None
    is_new = False
    if ref is None or entry is None or entry.node.has_errors:
        placed = await _place(runtime, req, ref, meeting_id, name)
        if isinstance(placed, ApiResult):
            return placed
        ref, entry, is_new = placed
    params = req.params
    if not is_new and ref.failover_state != AS_CREATED:  # re-created by a failover: the node made its own passwords
        params = stored_create.without_known_passwords(params, await stored_create.load_passwords(runtime, ref))
    body = _client_body(req) or (await slide_request(runtime, req.ctx) if req.ctx.assets.slide else PLAIN_GET)
    return await _send(runtime, req, ref, entry, is_new, body, params)


async def _send(
    runtime: Runtime,
    req: ApiRequest,
    ref: MeetingRef,
    entry: NodeEntry,
    is_new: bool,
    body: RequestBody,
    client_params: p.Params,
) -> ApiResult:
    """Forward the create; a new meeting that its node certainly failed goes to the next node."""
    attempts = runtime.config.api.create_attempts
    for attempt in range(1, attempts + 1):
        if is_new and req.ctx.recording_enabled:
            await _open_record_set(runtime, req, ref)
        params = _rewrite(runtime, req.ctx, client_params, ref)
        ref.creating += 1  # no poll drops a meeting while a create of it is under way
        try:
            outcome = await call_node(runtime, entry, "create", params, method=body[0], body=body[1],
                                      content_type=body[2])
        finally:
            ref.creating -= 1
        if outcome.verdict == "ok":
            if succeeded(outcome.result):
                ref.uncertain_since = 0.0
                ref.seen_at = time.monotonic()  # the grace against racing polls starts now
                entry.create_succeeded()
            elif is_new:  # the request itself was refused (bad parameters): nothing runs anywhere
                await _forget(runtime, ref)
            return outcome.result
        if outcome.verdict == "uncertain":
            # The node may have created it: keep routing there until its next poll decides.
            node_suspected(runtime, entry, "create", outcome.reason)
            if is_new or ref.uncertain_since:
                ref.uncertain_since = time.monotonic()
            return UNCERTAIN
        if outcome.verdict == "node_fault":
            node_suspected(runtime, entry, "create", outcome.reason)
            entry.create_failed()
        moved = await _move(runtime, req, ref, entry) if is_new and attempt < attempts else None
        if moved == LOST_RACE:  # another create moved or ended the row: it is theirs now
            return outcome.result
        if not isinstance(moved, tuple):
            if is_new:
                await _forget(runtime, ref)
            return outcome.result
        ref, entry = moved
    raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover


RequestBody = tuple[str, bytes | None, str | None]  # method, body, Content-Type towards the node


PLAIN_GET: RequestBody = ("GET", None, None)


def _client_body(req: ApiRequest) -> RequestBody | None:
    """The client's own POST body, forwarded as it is (else the tenant's default slide, or a plain GET)."""
    if req.method == "POST" and not req.params_from_body and req.body:
        return "POST", req.body, req.content_type
    return None


async def slide_request(runtime: Runtime, ctx: SecretContext) -> RequestBody:
    body = await _slide_body(runtime, ctx)
    return ("POST", body, "application/xml") if body is not None else PLAIN_GET


LOST_RACE = "lost race"


async def _move(
    runtime: Runtime, req: ApiRequest, ref: MeetingRef, failed_on: NodeEntry
) -> tuple[MeetingRef, NodeEntry] | str | None:
    """A new meeting whose node certainly failed to create it goes to the next node (fresh nonce).

    None: no node left (or the database failed); LOST_RACE: a concurrent create moved or ended
    the row first, which then is no longer ours to delete."""
    ctx = req.ctx
    exclude = set(runtime.meetings.nodes_hosting(ref.meeting_id, ctx.secret.id))
    exclude.add(failed_on.node.id)
    entry = runtime.loads.choose(ctx.tenant.cluster_group_id, dict.fromkeys(exclude))
    if entry is None:
        return None
    args = _row_args(ctx, req, req.get("name") or "")
    try:
        row = await move_row(runtime, ref, entry, restart=args)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        log.warning("cannot move meeting %s off node %s: %s", ref.id, failed_on.node.slug, exc)
        return None
    if row is None:  # a concurrent create moved or ended it first
        runtime.loads.unplaced(failed_on.node.id)
        runtime.meetings.remove(ref, forget=False)  # a reload brings the row as it is now
        return LOST_RACE
    runtime.loads.unplaced(failed_on.node.id)
    if ctx.recording_enabled:  # the meeting never ran there: nothing will be uploaded for the old nonce
        try:
            await runtime.pool.execute(Q.record_set_unrecorded, ref.nonce, ref.meeting_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("cannot drop the record set of meeting %s's failed create: %s", ref.id, exc)
    moved = MeetingRef.from_row(row)
    runtime.meetings.add(moved)  # replaces its record (not a removal: the row id lives on)
    runtime.loads.placed(entry.node.id)
    runtime.announce("created", moved)
    log.info("create of %s failed on node %s, trying node %s", ref.meeting_id, failed_on.node.slug, entry.node.slug)
    return moved, entry


async def _open_record_set(runtime: Runtime, req: ApiRequest, ref: MeetingRef) -> None:
    """Spec 3.5: the set the node's upload will fill, stored before the node is asked (a SUCCESS
    means it is durable). Without it the meeting is not created at all."""
    try:
        await open_record_set(runtime, req.ctx, ref, *_row_args(req.ctx, req, req.get("name") or ""))
    except Exception:
        await _forget(runtime, ref)
        raise


async def open_record_set(
    runtime: Runtime, ctx: SecretContext, ref: MeetingRef, name: str, callback: str, ready_url: str
) -> None:
    await runtime.pool.execute(Q.record_set_open, ref.nonce, ctx.secret.id, ref.meeting_id, ctx.tenant.slug,
                               name, ready_url, callback)


async def move_row(
    runtime: Runtime,
    ref: MeetingRef,
    target: NodeEntry,
    *,
    restart: tuple[str, str, str] | None = None,
    stored: str | None = None,
    failover: bool = False,
) -> asyncpg.Record | None:
    """The one way a meeting's row changes node (a create restarting it, a create's next attempt, a
    failover): only while it still has the nonce `ref` saw, so of concurrent movers in any number of
    processes exactly one gets the row, the others None (they read where it went).

    `restart`: the name and callback URLs of a create that restarts the room, and `stored` its
    parameters (None: kept, as a failover re-creates it as it was); `failover`: the row says
    "being re-created" until the failover's create answered (b3lb/api/failover.py)."""
    name, callback, ready_url = restart if restart is not None else (None, None, None)
    return await runtime.pool.fetchrow(Q.meeting_move, ref.id, target.node.id, name, callback, ready_url,
                                       ref.nonce, stored, failover)


def _row_args(ctx: SecretContext, req: ApiRequest, name: str) -> tuple[str, str, str]:
    """meeting_name, end_callback_url, recording_ready_url of the routing record."""
    callback = p.first_casefold(req.params, END_CALLBACK)
    ready = p.first_casefold(req.params, READY_URL) if ctx.recording_enabled else None
    ready_url = ready[1] if ready else ""
    return name, callback[1] if callback else "", ready_url


async def _place(
    runtime: Runtime, req: ApiRequest, stale: MeetingRef | None, meeting_id: str, name: str
) -> tuple[MeetingRef, NodeEntry, bool] | ApiResult:
    """Choose a node, check limits, store the routing record. Returns (ref, node, is_new)."""
    ctx = req.ctx
    with_keys = runtime.config.api.add_message_keys
    # Never put a second tenant's meeting with the same ID on a node already hosting it.
    entry = runtime.loads.choose(ctx.tenant.cluster_group_id, runtime.meetings.nodes_hosting(meeting_id, ctx.secret.id))
    if entry is None:
        return no_node(with_keys)
    if _limit_hit(runtime, ctx, meeting_id):
        return limit_reached(with_keys)
    # Reserve node weight and limit slot before the first await, so that concurrent creates
    # see this meeting while its insert runs (a burst spreads, limits hold).
    runtime.loads.placed(entry.node.id)
    runtime.meetings.begin_placing(ctx.secret.id, meeting_id)
    placed: tuple[MeetingRef, NodeEntry, bool] | ApiResult = no_node(with_keys)
    try:
        placed = await _store(runtime, ctx, stale, meeting_id, name, entry, req)
    finally:
        runtime.meetings.end_placing(ctx.secret.id, meeting_id)
        if not (isinstance(placed, tuple) and placed[2]):
            runtime.loads.unplaced(entry.node.id)
    return placed


async def _store(
    runtime: Runtime,
    ctx: SecretContext,
    stale: MeetingRef | None,
    meeting_id: str,
    name: str,
    entry: NodeEntry,
    req: ApiRequest,
) -> tuple[MeetingRef, NodeEntry, bool] | ApiResult:
    with_keys = runtime.config.api.add_message_keys
    args = _row_args(ctx, req, name)
    # What a failover needs to re-create it, written with the routing row (no round trip of its own)
    client_body = _client_body(req)
    stored = stored_create.encode(req.params, client_body[1] if client_body else None, req.content_type)
    if stale is None:
        row = await runtime.meeting_inserts.insert(
            (ctx.secret.id, meeting_id, name, entry.node.id, args[1], args[2], stored)
        )
    else:  # its node is in error: restart the room elsewhere with a fresh nonce (the stale record stays
        # meanwhile: a join of it here tries the same conditional move, and one of them wins)
        row = await move_row(runtime, stale, entry, restart=args, stored=stored)
    if row is None:  # another create (maybe on another instance) placed or moved it first
        row = await runtime.pool.fetchrow(Q.meeting_by_key, ctx.secret.id, meeting_id)
        if row is None:
            return no_node(with_keys)
        existing = MeetingRef.from_row(row)
        won = runtime.loads.nodes.get(existing.node_id)
        if won is not None and not won.node.has_errors:
            runtime.meetings.add(existing)
            return existing, won, False
        # known elsewhere but on a node in error: restart it here, once
        row = await move_row(runtime, existing, entry, restart=args, stored=stored)
        if row is None:
            return no_node(with_keys)
    ref = MeetingRef.from_row(row)
    runtime.meetings.add(ref)
    runtime.counters.add(ctx.secret.id, "meetings_created")
    runtime.announce("created", ref)
    return ref, entry, True


def _limit_hit(runtime: Runtime, ctx: SecretContext, meeting_id: str) -> bool:
    """Spec section 6, in its order; a trip is counted on the tenant's or the secret's counter.

    Meetings other creates are placing right now count as meetings (not as attendees). A limit of
    0 is "unlimited", and a sum is made only for a limit that is set."""
    tenant = ctx.tenant
    meetings = runtime.meetings
    siblings = runtime.directory.secrets_by_tenant.get(tenant.id, [])
    own = ctx.secret.id
    alone = len(siblings) == 1 and siblings[0].secret.id == own  # the usual tenant: one secret
    own_meetings = meetings.count_for_secret(own)
    tenant_meetings = own_meetings if alone else sum(meetings.count_for_secret(s.secret.id) for s in siblings)
    own_placing = -1  # not counted yet
    if tenant.meeting_limit > 0:
        if alone:
            placing = own_placing = meetings.placing_for_secret(own, meeting_id)
        else:
            placing = sum(meetings.placing_for_secret(s.secret.id, meeting_id) for s in siblings)
        if tenant_meetings + placing >= tenant.meeting_limit:
            return _tripped(runtime, _main_secret(siblings, own), "meeting_limit_hits")
    limit = ctx.secret_meeting_limit
    if limit > 0:
        if own_placing < 0:
            own_placing = meetings.placing_for_secret(own, meeting_id)
        if own_meetings + own_placing >= limit:
            return _tripped(runtime, own, "meeting_limit_hits")
    # Attendee limits are skipped while there are no meetings.
    limit = tenant.attendee_limit
    if limit > 0 and tenant_meetings and sum(meetings.attendees_for_secret(s.secret.id) for s in siblings) >= limit:
        return _tripped(runtime, _main_secret(siblings, own), "attendee_limit_hits")
    limit = ctx.secret_attendee_limit
    if limit > 0 and own_meetings and meetings.attendees_for_secret(own) >= limit:
        return _tripped(runtime, own, "attendee_limit_hits")
    return False


def _main_secret(siblings: list[SecretContext], own: int) -> int:
    """The tenant's main secret (sub 0), which counts the tenant's limit trips."""
    return next((s.secret.id for s in siblings if s.secret.sub_id == 0), own)


def _tripped(runtime: Runtime, secret_id: int, counter: str) -> bool:
    runtime.counters.add(secret_id, counter)
    return True


def _rewrite(runtime: Runtime, ctx: SecretContext, params: p.Params, ref: MeetingRef) -> p.Params:
    """Spec 5.3: rules, voice removal, logo, recording flags, end callback. Injections win.

    One pass over the parameters: a value b3lb sets replaces the first occurrence of its key
    (keeping its place; later ones are dropped) or is appended, in the order below."""
    base = runtime.config.public_base_url
    params = p.apply_rules(params, ctx.create_rules)
    recording = ctx.recording_enabled
    # key -> value set; its first occurrence is replaced, appended (in this order) when absent
    sets = {RECORDSET_TAG: str(ref.nonce)} if recording else dict.fromkeys(RECORD_FLAGS, "false")
    callback = f"{base}/b3lb/b/meeting/end?nonce={ref.nonce}"
    out: p.Params = []
    done: set[str] = set()
    has_logo = has_callback = False
    for k, v in params:
        if k in _VOICE:
            continue
        lowered = k.lower()
        if lowered == _END_CALLBACK_LOWER:  # any spelling (BBB lower-cases metadata keys)
            if not has_callback:
                out.append((k, callback))
                has_callback = True
        elif recording and lowered == READY_URL:
            # Any spelling: BBB lower-cases metadata keys, so the node would call the frontend itself with a
            # token signed by the node's secret, which the frontend cannot verify.
            continue
        elif k in sets:
            if k not in done:
                out.append((k, sets[k]))
                done.add(k)
        else:
            has_logo = has_logo or k == "logo"
            out.append((k, v))
    if ctx.assets.logo and not has_logo:
        out.append(("logo", f"{base}/b3lb/t/{ctx.tenant.slug.lower()}/logo"))
    out.extend((k, value) for k, value in sets.items() if k not in done)
    if not has_callback:
        out.append((END_CALLBACK, callback))
    return out


async def _slide_body(runtime: Runtime, ctx: SecretContext) -> bytes | None:
    """Spec 5.5: the tenant's default slide as a presentation module (embedded when small)."""
    row = await runtime.pool.fetchrow(Q.slide_asset, ctx.tenant.id)
    if row is None:
        return None
    data: bytes = row["slide_data"]
    slug = ctx.tenant.slug.lower()
    filename = row["slide"] or f"{slug}{PurePosixPath(row['slide']).suffix}"
    if len(data) <= EMBED_LIMIT:
        document = f"<document name={quoteattr(filename)}>{base64.b64encode(data).decode()}</document>"
    else:
        url = f"{runtime.config.public_base_url}/b3lb/t/{slug}/slide"
        document = f"<document url={quoteattr(url)} filename={quoteattr(filename)}></document>"
    return f'<modules><module name="presentation">{document}</module></modules>'.encode()


async def _forget(runtime: Runtime, ref: MeetingRef) -> None:
    """The node did not create the meeting: drop our record so a retry is placed afresh."""
    runtime.meetings.remove(ref)
    runtime.announce("ended", ref)
    runtime.loads.unplaced(ref.node_id)
    try:  # only the row as this create made it: a concurrent restart elsewhere has a new nonce
        await runtime.pool.execute(Q.meeting_delete, ref.id, ref.nonce)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        log.warning("cannot delete failed meeting %s: %s", ref.id, exc)

