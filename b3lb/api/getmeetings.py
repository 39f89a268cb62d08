"""`getMeetings`: the caller's meetings as their nodes reported them at the last poll.

Secret sub_id 0 sees every meeting of its tenant, other secrets only their own. Each meeting's
`<meeting>` element is the node's own, copied verbatim by the poller and attached to our
routing record, so another tenant's meeting with the same ID can never leak, and an ended
meeting disappears at once. Meetings of a node in error are left out (as B3LB does); a single
failed poll keeps the last known state until the node's error state flips.

Every instance answers from memory: the polling process holds what it polled, the others what
it stored in each meeting's row, read with the changed rows (b3lb/meeting_sync.py) at most one
poll interval and one cache refresh late. A meeting created since its node's last poll is listed
at once, as BBB does: its element comes from one getMeetingInfo call to its node (same children
as a getMeetings element) and is kept until the poll brings the node's own. Either way b3lb's
private metadata (bbbxml.PRIVATE_KEYS) is already cut out of the stored element, so nothing is
rewritten per request.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from lxml import etree

from b3lb import bbbxml
from b3lb.api.forward import call_node
from b3lb.api.xml import NO_MEETINGS, ApiResult
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
        secret_ids = [s.secret.id for s in runtime.directory.secrets_by_tenant.get(ctx.tenant.id, [])]
    else:
        secret_ids = [ctx.secret.id]
    nodes = runtime.loads.nodes
    refs = [
        ref
        for secret_id in secret_ids
        for ref in runtime.meetings.for_secret(secret_id)
        if ref.node_id in nodes and not nodes[ref.node_id].node.has_errors
    ]
    parts = [ref.xml for ref in refs if ref.xml is not None]
    missing = [ref for ref in refs if ref.xml is None]
    if missing:
        parts.extend(await _fetch_elements(runtime, missing))
    if not parts:
        return NO_MEETINGS
    return ApiResult(_HEAD + b"".join(parts) + _TAIL)


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
    if element is not None and ref.xml is None:
        ref.xml = element  # until the poll brings the node's own copy
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
