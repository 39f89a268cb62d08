"""`getMeetings`: the caller's meetings as their nodes report them.

Secret sub_id 0 sees every meeting of its tenant, other secrets only their own. Meetings are
selected by (node, meetingID) pairs we own, so another tenant's meeting with the same ID on
the same node can never leak. A node that does not answer contributes nothing; the call
itself still succeeds.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import TYPE_CHECKING

from lxml import etree

from b3lb.api.forward import node_url
from b3lb.api.xml import NO_MEETINGS, ApiResult
from b3lb.balancer import NodeEntry
from b3lb.nodeclient import NodeRequestError
from b3lb.runtime import Runtime

if TYPE_CHECKING:
    from b3lb.api.handler import ApiRequest

log = logging.getLogger("b3lb.api")
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)


async def get_meetings(runtime: Runtime, req: ApiRequest) -> ApiResult:
    ctx = req.ctx
    if ctx.secret.sub_id == 0:
        secret_ids = [s.secret.id for s in runtime.directory.secrets_by_tenant.get(ctx.tenant.id, [])]
    else:
        secret_ids = [ctx.secret.id]
    wanted: dict[int, set[str]] = defaultdict(set)
    for secret_id in secret_ids:
        for ref in runtime.meetings.for_secret(secret_id):
            wanted[ref.node_id].add(ref.meeting_id)
    entries = [runtime.loads.nodes[n] for n in wanted if n in runtime.loads.nodes]
    entries = [e for e in entries if not e.node.has_errors]
    if not entries:
        return NO_MEETINGS
    parts = await asyncio.gather(*(_node_meetings(runtime, e, wanted[e.node.id]) for e in entries))
    meetings = b"".join(b"".join(part) for part in parts)
    if not meetings:
        return NO_MEETINGS
    return ApiResult(b"<response><returncode>SUCCESS</returncode><meetings>" + meetings + b"</meetings></response>")


async def _node_meetings(runtime: Runtime, entry: NodeEntry, ids: set[str]) -> list[bytes]:
    """The node's <meeting> elements for our meeting IDs, verbatim."""
    try:
        response = await runtime.nodes.fetch(
            node_url(entry, "getMeetings", []), timeout=runtime.config.poller.timeout
        )
        root = etree.fromstring(response.body, _PARSER)
    except (NodeRequestError, etree.XMLSyntaxError, ValueError) as exc:
        log.warning("getMeetings from node %s failed: %s", entry.node.slug, exc)
        return []
    selected = []
    for meeting in root.iterfind("meetings/meeting"):
        if meeting.findtext("meetingID") in ids and meeting.findtext("isBreakout") != "true":
            meeting.tail = None
            selected.append(etree.tostring(meeting, encoding="utf-8", xml_declaration=False))
    return selected
