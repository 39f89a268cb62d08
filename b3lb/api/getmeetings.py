"""`getMeetings`: the caller's meetings as their nodes reported them at the last poll.

Secret sub_id 0 sees every meeting of its tenant, other secrets only their own. Each meeting's
`<meeting>` element is the node's own, copied verbatim by the poller into the meeting's row, so
another tenant's meeting with the same ID can never leak, and an ended meeting disappears at
once. Meetings of a node in error are left out (as B3LB does); a single failed poll keeps the last
known state until the node's error state flips.

Which meetings a caller has comes from memory; their elements from one query, and the answer is
then kept until one of those meetings changes (b3lb/meeting_lists.py), so a frontend asking every
few seconds is answered from memory. A meeting created since its node's last poll is listed at
once, as BBB does: its element comes from one getMeetingInfo call to its node (same children as a
getMeetings element) and is kept until the poll brings the node's own. Either way b3lb's private
metadata (bbbxml.PRIVATE_KEYS) is already cut out of the element, so nothing is rewritten per
request.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from lxml import etree

from b3lb import bbbxml
from b3lb.api.forward import call_node
from b3lb.api.xml import NO_MEETINGS, ApiResult
from b3lb.meeting_lists import stored_elements
from b3lb.meetings import MeetingRef
from b3lb.runtime import Runtime

if TYPE_CHECKING:
    from b3lb.api.handler import ApiRequest

_HEAD = b"<response><returncode>SUCCESS</returncode><meetings>"
_TAIL = b"</meetings></response>"
# Meetings not yet polled that one getMeetings fetches from their nodes, at most.
FETCH_LIMIT = 50
FETCH_TIMEOUT = 2.0  # seconds for one such fetch
FETCH_RETRY = 5.0  # seconds before a meeting whose fetch found nothing is asked for again
_ENVELOPE = frozenset({"returncode", "messageKey", "message"})
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)


async def get_meetings(runtime: Runtime, req: ApiRequest) -> ApiResult:
    ctx = req.ctx
    if ctx.secret.sub_id == 0:
        secret_ids = tuple(s.secret.id for s in runtime.directory.secrets_by_tenant.get(ctx.tenant.id, []))
    else:
        secret_ids = (ctx.secret.id,)
    lists, meetings = runtime.meeting_lists, runtime.meetings
    stamp = (runtime.loads.health_version, *(meetings.versions.get(s, 0) for s in secret_ids))
    answer = lists.cached(secret_ids, stamp)
    if answer is None:
        answer = await _build(runtime, secret_ids, stamp)
    return ApiResult(answer) if answer else NO_MEETINGS


async def _build(runtime: Runtime, secret_ids: tuple[int, ...], stamp: tuple[int, ...]) -> bytes:
    """The answer's bytes (empty: no meetings), kept for the next call when it is complete and
    nothing changed while it was built."""
    nodes = runtime.loads.nodes
    refs = [
        ref
        for secret_id in secret_ids
        for ref in runtime.meetings.for_secret(secret_id)
        if ref.node_id in nodes and not nodes[ref.node_id].node.has_errors
    ]
    lists = runtime.meeting_lists
    stored = await stored_elements(runtime.pool, [ref.id for ref in refs if ref.listed])
    lists.forget_fetched(stored)  # the poll brought the node's own
    parts: list[bytes] = []
    missing: list[MeetingRef] = []
    for ref in refs:
        element = stored.get(ref.id) or lists.fetched.get(ref.id)
        if element is None:
            missing.append(ref)
        else:
            parts.append(element)
    if missing:
        found = await _fetch_elements(runtime, missing)
        parts.extend(found)
    answer = _HEAD + b"".join(parts) + _TAIL if parts else b""
    meetings = runtime.meetings
    now = (runtime.loads.health_version, *(meetings.versions.get(s, 0) for s in secret_ids))
    if not missing and now == stamp:
        lists.keep(secret_ids, stamp, answer)
    return answer


async def _fetch_elements(runtime: Runtime, refs: list[MeetingRef]) -> list[bytes]:
    """Elements of meetings not yet polled, from their nodes. A meeting is asked for once per
    FETCH_RETRY (concurrent calls do not repeat it), never while its create is under way or
    uncertain, never on a node whose calls fail, with a short timeout: a slow node must not hold
    a tenant's whole list."""
    now = time.monotonic()
    nodes = runtime.loads.nodes
    chosen = [
        ref for ref in refs
        if not ref.creating and not ref.uncertain_since and now - ref.info_tried > FETCH_RETRY
        and not nodes[ref.node_id].call_error
    ][:FETCH_LIMIT]
    for ref in chosen:
        ref.info_tried = now
    found = await asyncio.gather(*(_fetch_element(runtime, ref) for ref in chosen))
    return [element for element in found if element is not None]


async def _fetch_element(runtime: Runtime, ref: MeetingRef) -> bytes | None:
    entry = runtime.loads.nodes.get(ref.node_id)
    if entry is None:
        return None
    outcome = await call_node(runtime, entry, "getMeetingInfo", [("meetingID", ref.meeting_id)], timeout=FETCH_TIMEOUT)
    element = meeting_element(outcome.result.body) if outcome.verdict == "ok" else None
    if element is not None and not ref.listed:
        runtime.meeting_lists.remember_fetched(ref.id, element)  # until the poll brings the node's own
    return element


def meeting_element(info: bytes) -> bytes | None:
    """A getMeetingInfo SUCCESS answer as a getMeetings `<meeting>` element, else None."""
    try:
        root = etree.fromstring(info, _PARSER)
    except etree.XMLSyntaxError:
        return None
    if root.tag != "response" or root.findtext("returncode") != "SUCCESS":
        return None
    meeting = etree.Element("meeting")
    for child in list(root):
        if child.tag not in _ENVELOPE:
            meeting.append(child)
    metadata = meeting.find("metadata")
    if metadata is not None:
        bbbxml.drop_private(metadata)  # as the poller does: the set's nonce is not the tenant's
    return etree.tostring(meeting, encoding="utf-8")
