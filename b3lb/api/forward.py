"""Sending a (rewritten) call to the node that owns a meeting, signed with that node's secret."""

from __future__ import annotations

import logging

from b3lb.api.params import Params
from b3lb.api.xml import ApiResult, failed
from b3lb.balancer import NodeEntry
from b3lb.checksum import digest, signed_query
from b3lb.nodeclient import NodeRequestError
from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.forward")


def node_url(entry: NodeEntry, call: str, params: Params) -> str:
    node = entry.node
    return f"{entry.api_url}{call}?{signed_query(call, params, node.secret, entry.cluster.sha_algorithm)}"


def node_url_for_query(entry: NodeEntry, call: str, query: str) -> str:
    """Sign an already encoded query (the client's own, unchanged) for the node."""
    checksum = digest(entry.cluster.sha_algorithm.lower(), call, query, entry.node.secret)
    signed = f"{query}&checksum={checksum}" if query else f"checksum={checksum}"
    return f"{entry.api_url}{call}?{signed}"


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
    node cannot be reached or answers something that is not a BBB document.

    `params` is a parameter list to encode, or an already encoded query sent as it is."""
    url = node_url_for_query(entry, call, params) if isinstance(params, str) else node_url(entry, call, params)
    try:
        response = await runtime.nodes.fetch(url, method=method, body=body, content_type=content_type)
    except NodeRequestError as exc:
        return await _node_failed(runtime, entry, call, f"no answer ({exc})")
    if response.code >= 500 or (response.code == 200 and b"<response" not in response.body[:512]):
        return await _node_failed(runtime, entry, call, f"unusable answer (HTTP {response.code})")
    entry.failures = 0
    return ApiResult(response.body, response.code, response.content_type)


async def _node_failed(runtime: Runtime, entry: NodeEntry, call: str, reason: str) -> ApiResult:
    log.warning("node %s failed on %s: %s", entry.node.slug, call, reason)
    await runtime.node_failed(entry.node.id, reason)
    return failed("nodeUnavailable", f"The BigBlueButton server hosting this meeting gave {reason}.")


def succeeded(result: ApiResult) -> bool:
    return result.status == 200 and b"<returncode>SUCCESS</returncode>" in result.body
