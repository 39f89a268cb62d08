"""`getMeetings`: the caller's meetings as their nodes reported them at the last poll.

Secret sub_id 0 sees every meeting of its tenant, other secrets only their own. Each meeting's
`<meeting>` element is the node's own, copied verbatim by the poller and attached to our
routing record, so another tenant's meeting with the same ID can never leak, and an ended
meeting disappears at once. Meetings of a node in error are left out (as B3LB does); a single
failed poll keeps the last known state until the node's error state flips.

The polling process answers from memory. Other instances read the list the poller stored in
`secret_meeting_list` (one indexed query), which is at most one poll interval old.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from b3lb.api.xml import NO_MEETINGS, ApiResult
from b3lb.db import Q
from b3lb.runtime import Runtime

if TYPE_CHECKING:
    from b3lb.api.handler import ApiRequest

_HEAD = b"<response><returncode>SUCCESS</returncode><meetings>"
_TAIL = b"</meetings></response>"


async def get_meetings(runtime: Runtime, req: ApiRequest) -> ApiResult:
    ctx = req.ctx
    if not runtime.polling:
        stored = await runtime.pool.fetchval(Q.secret_list, ctx.secret.id)
        return ApiResult(_HEAD + stored.encode() + _TAIL) if stored else NO_MEETINGS
    if ctx.secret.sub_id == 0:
        secret_ids = [s.secret.id for s in runtime.directory.secrets_by_tenant.get(ctx.tenant.id, [])]
    else:
        secret_ids = [ctx.secret.id]
    nodes = runtime.loads.nodes
    parts = [
        ref.xml
        for secret_id in secret_ids
        for ref in runtime.meetings.for_secret(secret_id)
        if ref.xml is not None and ref.node_id in nodes and not nodes[ref.node_id].node.has_errors
    ]
    if not parts:
        return NO_MEETINGS
    return ApiResult(_HEAD + b"".join(parts) + _TAIL)
