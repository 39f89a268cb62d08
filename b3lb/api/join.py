"""`join`: a 302 to the owning node's join URL, re-signed for that node.

The common case touches no database and awaits nothing: the meeting comes from the in-memory
routing table and the join counter is a dict increment flushed later. A meeting whose node is in
error is first re-created on a healthy node (b3lb/api/failover.py).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import quote

from b3lb.api import failover, stored_create
from b3lb.api.forward import node_url, node_url_for_query
from b3lb.api.params import Params, apply_rules, first, set_default
from b3lb.api.xml import INVALID_MEETING, MISSING_MEETING_ID, ApiResult, failed
from b3lb.balancer import NodeEntry
from b3lb.meetings import AS_CREATED, RECREATING, MeetingRef
from b3lb.runtime import Runtime

if TYPE_CHECKING:
    from b3lb.api.handler import ApiRequest

CSS_PARAM = "userdata-bbb_custom_style_url"
ROLES = frozenset({stored_create.MODERATOR, stored_create.VIEWER})
INVALID_PASSWORD = (
    "invalidPassword",
    "You either did not supply a password or the password supplied is neither the attendee or moderator "
    "password for this conference.",
)


def join_now(runtime: Runtime, req: ApiRequest) -> ApiResult | None:
    """The answer from memory, or None when `join` must await (the meeting is not in memory, its
    node is in error, or a failover is re-creating it). Awaits nothing: the API handler runs it as
    soon as the request is read, without a task."""
    meeting_id = req.get("meetingID")
    if not meeting_id:
        return MISSING_MEETING_ID
    ref = runtime.meetings.get(req.ctx.secret.id, meeting_id)
    if ref is None:
        return None
    entry = runtime.loads.nodes.get(ref.node_id)
    if entry is None or entry.node.has_errors:
        return None  # fail over (b3lb/api/failover.py)
    if not ref.failover_state:  # AS_CREATED: the common case
        return redirect(runtime, req, entry)
    return None if ref.failover_state == RECREATING else role_join(runtime, req, ref, entry)


async def join(runtime: Runtime, req: ApiRequest) -> ApiResult:
    result = join_now(runtime, req)
    if result is not None:
        return result
    ctx = req.ctx
    meeting_id = req.get("meetingID") or ""
    # Maybe created by another instance: one indexed query.
    ref = await runtime.lookup_meeting(ctx.secret.id, meeting_id)
    if ref is None:
        return unknown_meeting(runtime, req)
    entry = runtime.loads.nodes.get(ref.node_id)
    if entry is None or entry.node.has_errors or ref.failover_state == RECREATING:
        placed = await failover.fail_over(runtime, ctx, ref)
        if placed is None:
            if runtime.meetings.get(ctx.secret.id, meeting_id) is None:
                return unknown_meeting(runtime, req)
            return join_error(runtime, req, *failover.NO_NODE_LEFT, document=failover.UNAVAILABLE)
        ref, entry = placed
    if ref.failover_state == AS_CREATED:
        return redirect(runtime, req, entry)
    if req.get("password"):
        await stored_create.load_passwords(runtime, ref)
    return role_join(runtime, req, ref, entry) or redirect(runtime, req, entry)


def role_join(runtime: Runtime, req: ApiRequest, ref: MeetingRef, entry: NodeEntry) -> ApiResult | None:
    """A join of a meeting a failover re-created: its node made up its own passwords, so a join's
    `password` goes there as the role it stood for (a valid `role` wins, as on BBB). None when the
    password hashes are not in memory yet."""
    password = req.get("password")
    if not password or (req.get("role") or "").upper() in ROLES:
        return redirect(runtime, req, entry)
    if ref.passwords is None:
        return None
    role = ref.passwords.role_for(password)
    if role is None:  # as BBB answers a wrong password
        return join_error(runtime, req, *INVALID_PASSWORD)
    params: Params = []
    for key, value in req.params:
        if key == "password":
            if ("role", role) not in params:
                params.append(("role", role))  # in the password's place
        elif key != "role":  # an invalid role (BBB then goes by the password)
            params.append((key, value))
    return redirect(runtime, req, entry, params)


def redirect(runtime: Runtime, req: ApiRequest, entry: NodeEntry, params: Params | None = None) -> ApiResult:
    """The 302 to the meeting's node, with the join's parameters (or `params` instead)."""
    ctx = req.ctx
    runtime.counters.add(ctx.secret.id, "attendees_joined")
    if params is None and not ctx.join_rules and not ctx.assets.css and req.raw_query is not None:
        # Nothing to rewrite: sign the client's own query for the node, no decoding or re-encoding.
        location = node_url_for_query(entry, "join", req.raw_query)
    else:
        params = apply_rules(req.params if params is None else params, ctx.join_rules)
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
    return join_error(runtime, req, "invalidMeetingIdentifier", "A meeting with that ID does not exist",
                      document=INVALID_MEETING)


def join_error(
    runtime: Runtime, req: ApiRequest, key: str, message: str, *, document: ApiResult | None = None
) -> ApiResult:
    """A join BBB refuses: a browser (not redirect=false) goes to errorRedirectUrl (else logoutURL)
    with BBB's `errors=` list, anything else gets the FAILED document."""
    if (first(req.params, "redirect") or "").lower() != "false":
        target = first(req.params, "errorRedirectUrl") or first(req.params, "logoutURL") or ""
        if target.startswith(("http://", "https://")):
            errors = json.dumps([{"key": key, "message": message}], separators=(",", ":"))
            separator = "&" if "?" in target else "?"
            location = f"{location_safe(target)}{separator}errors={quote(errors, safe='')}"
            return ApiResult(b"", status=302, headers={"Location": location})
    return document if document is not None else failed(key, message)
