"""Calls passed through to the node that owns the meeting."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import asyncpg

from b3lb import bbbxml
from b3lb.api import failover, stored_create
from b3lb.api.forward import forward, succeeded
from b3lb.api.xml import MEETING_NOT_FOUND, MISSING_MEETING_ID, NOT_RUNNING, ApiResult
from b3lb.balancer import NodeEntry
from b3lb.db import Q
from b3lb.meetings import AS_CREATED, RECREATING, MeetingRef
from b3lb.runtime import Runtime

if TYPE_CHECKING:
    from b3lb.api.handler import ApiRequest

log = logging.getLogger("b3lb.api")


async def owner(runtime: Runtime, req: ApiRequest) -> tuple[MeetingRef, NodeEntry] | None:
    """The meeting and its node, or None when unknown or its node is in error (spec 2.1) and no
    failover (here or in another process) has moved it to a healthy one."""
    meeting_id = req.get("meetingID")
    if not meeting_id:
        return None
    # Memory first without a coroutine (lookup_meeting checks it too, then asks the database).
    ref = runtime.meetings.get(req.ctx.secret.id, meeting_id) or await runtime.lookup_meeting(
        req.ctx.secret.id, meeting_id
    )
    if ref is None:
        return None
    entry = runtime.loads.nodes.get(ref.node_id)
    if entry is None or entry.node.has_errors or ref.failover_state == RECREATING:
        return await failover.current_placement(runtime, ref)
    return ref, entry


# BBB 3.0 takes sendChatMessage as GET only; B3LB accepted POST too, so we forward it as GET.
GET_ONLY_ON_NODE = frozenset({"sendChatMessage"})


def pass_through(runtime: Runtime, req: ApiRequest, entry: NodeEntry) -> Coroutine[Any, Any, ApiResult]:
    """The forward to await (a plain function: one coroutine less on every forwarded call)."""
    # Nothing is rewritten here: the client's own query goes on when it can, else re-encoded.
    query = req.raw_query if req.raw_query is not None else req.params
    if req.method == "POST" and not req.params_from_body and req.call not in GET_ONLY_ON_NODE:
        return forward(runtime, entry, req.call, query, method="POST", body=req.body, content_type=req.content_type)
    return forward(runtime, entry, req.call, query)


async def _simple(runtime: Runtime, req: ApiRequest) -> ApiResult:
    if not req.get("meetingID"):
        return MISSING_MEETING_ID
    found = await owner(runtime, req)
    if found is None:
        return MEETING_NOT_FOUND
    return await pass_through(runtime, req, found[1])


async def get_meeting_info(runtime: Runtime, req: ApiRequest) -> ApiResult:
    return without_private_metadata(await _simple(runtime, req))


def without_private_metadata(result: ApiResult) -> ApiResult:
    """The node's getMeetingInfo answer without b3lb's private metadata (the set's nonce, b3lb's
    own end callback): cut from the bytes as the poller cuts getMeetings elements (bbbxml.py), so
    the answer is never parsed and is byte for byte the node's when it has none."""
    body = bbbxml.without_private(result.body)
    return result if body is result.body else dataclasses.replace(result, body=body)


insert_document = _simple
send_chat_message = _simple
set_config_xml = _simple


async def is_meeting_running(runtime: Runtime, req: ApiRequest) -> ApiResult:
    found = await owner(runtime, req)
    if found is None:
        return NOT_RUNNING
    return await pass_through(runtime, req, found[1])


async def end(runtime: Runtime, req: ApiRequest) -> ApiResult:
    if not req.get("meetingID"):
        return MISSING_MEETING_ID
    found = await owner(runtime, req)
    if found is None:
        return MEETING_NOT_FOUND
    ref, entry = found
    if ref.failover_state != AS_CREATED and req.get("password"):
        # Re-created by a failover: the node made up its own moderator password, so the original
        # one (checked against its stored hash) is left out; a wrong one goes on for the node to refuse.
        hashes = await stored_create.load_passwords(runtime, ref)
        params = stored_create.without_moderator_password(req.params, hashes)
        result = await forward(runtime, entry, req.call, params)
    else:
        result = await pass_through(runtime, req, entry)
    if succeeded(result):
        # Leave routing at once: a create right after end must place the meeting afresh.
        runtime.meetings.remove(ref)
        runtime.announce("ended", ref)
        try:
            seconds = await runtime.pool.fetchval(Q.meeting_end, ref.id)
            runtime.counters.meeting_ended(ref.secret_id, seconds)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("meeting %s ended on its node but not in the database: %s", ref.id, exc)
    return result
