"""Sending a (rewritten) call to the node that owns a meeting, signed with that node's secret.

A node that fails a call is not judged here: the poller owns node health (b3lb/poller.py), and a
failed call only asks it to look at that node again at once (`Runtime.suspect_node`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from b3lb.api.params import Params
from b3lb.api.xml import ApiResult, failed
from b3lb.balancer import NodeEntry
from b3lb.checksum import digest, signed_query
from b3lb.nodeclient import NodeRequestError, NodeResponse
from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.forward")

# Answers that say the node itself is broken (not the request): the same call may go elsewhere.
# checksumError means our own signature with the node's secret failed: a node configuration fault.
NODE_FAULT_KEYS = frozenset({"internalError", "checksumError"})
_MESSAGE_KEY = re.compile(rb"<messageKey>\s*([^<\s]*)\s*</messageKey>")


def node_url(entry: NodeEntry, call: str, params: Params) -> str:
    node = entry.node
    return f"{entry.api_url}{call}?{signed_query(call, params, node.secret, entry.cluster.sha_algorithm)}"


def node_url_for_query(entry: NodeEntry, call: str, query: str) -> str:
    """Sign an already encoded query (the client's own, unchanged) for the node."""
    checksum = digest(entry.cluster.sha_algorithm.lower(), call, query, entry.node.secret)
    signed = f"{query}&checksum={checksum}" if query else f"checksum={checksum}"
    return f"{entry.api_url}{call}?{signed}"


@dataclass(slots=True)
class NodeOutcome:
    """What became of one call to a node.

    `verdict`: "ok" (a BBB document: SUCCESS, or a FAILED caused by the request itself),
    "node_fault" (the node certainly did not do it: refused, reset, 5xx, unusable or internalError
    answer), "uncertain" (sent, but no answer in time: the node may have done it), or "local"
    (b3lb never sent it: no free connection slot in time).
    """

    verdict: str
    result: ApiResult
    reason: str = ""
    answered: bool = False  # the node sent a BBB document (SUCCESS or FAILED)


def message_key(body: bytes) -> str:
    """The <messageKey> of a BBB answer ('' when it has none), read from its first 8 KiB."""
    key = _MESSAGE_KEY.search(body, 0, 8192)
    return key.group(1).decode("ascii", "replace") if key is not None else ""


def outcome_of_error(exc: NodeRequestError) -> NodeOutcome:
    """A request that got no answer, classified."""
    kind = getattr(exc, "kind", "connect")
    if kind == "local":
        return NodeOutcome("local", _unavailable("no free connection to it"), str(exc))
    verdict = "uncertain" if kind == "timeout" else "node_fault"
    return NodeOutcome(verdict, _unavailable(f"no answer ({exc})"), str(exc))


def outcome_of_response(response: NodeResponse) -> NodeOutcome:
    """A node's answer, classified."""
    body = response.body
    if response.code >= 500 or (response.code == 200 and body.find(b"<response", 0, 512) < 0):
        return NodeOutcome("node_fault", _unavailable(f"an unusable answer (HTTP {response.code})"),
                           f"unusable answer (HTTP {response.code})")
    result = ApiResult(body, response.code, response.content_type)
    if body.find(b"<returncode>FAILED</returncode>", 0, 4096) >= 0:
        key = message_key(body)
        if key in NODE_FAULT_KEYS:
            return NodeOutcome("node_fault", result, f"answered {key}", answered=True)
    return NodeOutcome("ok", result, answered=True)


async def call_node(
    runtime: Runtime,
    entry: NodeEntry,
    call: str,
    params: Params | str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    content_type: str | None = None,
    timeout: float | None = None,
) -> NodeOutcome:
    """One call to a node, classified. `params` is a parameter list to encode, or an already
    encoded query sent as it is."""
    url = node_url_for_query(entry, call, params) if isinstance(params, str) else node_url(entry, call, params)
    try:
        response = await runtime.nodes.fetch(url, method=method, body=body, content_type=content_type, timeout=timeout)
    except NodeRequestError as exc:
        return outcome_of_error(exc)
    outcome = outcome_of_response(response)
    if outcome.answered:
        entry.call_error = ""
    return outcome


async def forward(
    runtime: Runtime,
    entry: NodeEntry,
    call: str,
    params: Params | str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    content_type: str | None = None,
) -> ApiResult:
    """The node's answer unchanged (status, body, Content-Type), or a FAILED document when the
    node cannot be reached or answers something that is not a BBB document."""
    outcome = await call_node(runtime, entry, call, params, method=method, body=body, content_type=content_type)
    if outcome.verdict in ("node_fault", "uncertain"):
        node_suspected(runtime, entry, call, outcome.reason)
    return outcome.result


def node_suspected(runtime: Runtime, entry: NodeEntry, call: str, reason: str) -> None:
    if entry.call_error != reason:  # a line when the failure starts or changes, not one per call
        entry.call_error = reason
        log.warning("node %s failed on %s: %s", entry.node.slug, call, reason)
    runtime.suspect_node(entry.node.id, reason)


def _unavailable(what: str) -> ApiResult:
    return failed("nodeUnavailable", f"The BigBlueButton server hosting this meeting gave {what}.")


def succeeded(result: ApiResult) -> bool:
    return result.status == 200 and b"<returncode>SUCCESS</returncode>" in result.body
