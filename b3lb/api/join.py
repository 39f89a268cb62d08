"""`join`: a 302 to the owning node's join URL, re-signed for that node.

The common case touches no database and awaits nothing: the meeting comes from the in-memory
routing table and the join counter is a dict increment flushed later.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import quote

from b3lb.api.forward import node_url, node_url_for_query
from b3lb.api.params import apply_rules, first, set_default
from b3lb.api.xml import INVALID_MEETING, MISSING_MEETING_ID, ApiResult
from b3lb.meetings import MeetingRef
from b3lb.runtime import Runtime

if TYPE_CHECKING:
    from b3lb.api.handler import ApiRequest

CSS_PARAM = "userdata-bbb_custom_style_url"
_UNKNOWN_ERRORS = json.dumps(
    [{"key": "invalidMeetingIdentifier", "message": "A meeting with that ID does not exist"}],
    separators=(",", ":"),
)


def join_now(runtime: Runtime, req: ApiRequest) -> ApiResult | None:
    """The answer from memory, or None when the meeting is not in memory (then `join` looks it up).
    Awaits nothing: the API handler runs it as soon as the request is read, without a task."""
    meeting_id = req.get("meetingID")
    if not meeting_id:
        return MISSING_MEETING_ID
    ref = runtime.meetings.get(req.ctx.secret.id, meeting_id)
    return None if ref is None else redirect(runtime, req, ref)


async def join(runtime: Runtime, req: ApiRequest) -> ApiResult:
    result = join_now(runtime, req)
    if result is not None:
        return result
    # Maybe created by another instance: one indexed query.
    return redirect(runtime, req, await runtime.lookup_meeting(req.ctx.secret.id, req.get("meetingID") or ""))


def redirect(runtime: Runtime, req: ApiRequest, ref: MeetingRef | None) -> ApiResult:
    """The 302 to the meeting's node, or BBB's answer for an unknown meeting."""
    entry = runtime.loads.nodes.get(ref.node_id) if ref is not None else None
    if entry is None or entry.node.has_errors:
        return unknown_meeting(runtime, req)
    ctx = req.ctx
    runtime.counters.add(ctx.secret.id, "attendees_joined")
    if not ctx.join_rules and not ctx.assets.css and req.raw_query is not None:
        # Nothing to rewrite: sign the client's own query for the node, no decoding or re-encoding.
        location = node_url_for_query(entry, "join", req.raw_query)
    else:
        params = apply_rules(req.params, ctx.join_rules)
        if ctx.assets.css:
            css_url = f"{runtime.config.public_base_url}/b3lb/t/{ctx.tenant.slug.lower()}/css"
            params = set_default(params, CSS_PARAM, css_url)
        location = node_url(entry, "join", params)
    return ApiResult(b"", status=302, headers={"Location": location})


# Characters a URL may carry as they are; everything else (non-ASCII, spaces, controls such as
# CR/LF or U+2028) is percent-encoded as UTF-8 before it goes into the Location header.
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


def location_safe(url: str) -> str:
    return url if url.isascii() and url.isprintable() and " " not in url else quote(url, safe=_URL_SAFE)


def unknown_meeting(runtime: Runtime, req: ApiRequest) -> ApiResult:
    """Spec 2.4 (REC): XML for redirect=false, else a redirect carrying BBB's `errors=` list."""
    if runtime.config.api.legacy_400_on_unknown_join:
        return ApiResult(b"", status=400, content_type="text/html; charset=utf-8")
    if (first(req.params, "redirect") or "").lower() != "false":
        target = first(req.params, "errorRedirectUrl") or first(req.params, "logoutURL") or ""
        if target.startswith(("http://", "https://")):
            separator = "&" if "?" in target else "?"
            location = f"{location_safe(target)}{separator}errors={quote(_UNKNOWN_ERRORS, safe='')}"
            return ApiResult(b"", status=302, headers={"Location": location})
    return INVALID_MEETING
