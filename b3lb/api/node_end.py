"""Ending one meeting on its node with BBB's own `end` call: the one implementation behind the admin
API's `meeting end` (b3lb/admin/api_activity.py) and a node panic (b3lb/admin/lifecycle.py).

The call is signed as every forwarded call is (the node's secret, its cluster's checksum algorithm;
b3lb/api/forward.py) and its answer is classified the same way (`outcome_of_response`). It needs
only a NodeClient and the node's address, so the `b3lb` command can use it without a serving
process's runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from b3lb.api.forward import NodeOutcome, message_key, outcome_of_error, outcome_of_response, succeeded
from b3lb.balancer import NodeEntry
from b3lb.checksum import signed_query
from b3lb.models import Node
from b3lb.nodeclient import NodeClient, NodeRequestError


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where and how to sign a call to one node."""

    api_url: str  # https://node.example.org:443/bigbluebutton/api/
    secret: str
    algorithm: str  # the cluster's: SHA256, SHA384 or SHA512

    @classmethod
    def of_entry(cls, entry: NodeEntry) -> NodeAddress:
        return cls(entry.api_url, entry.node.secret, entry.cluster.sha_algorithm)

    @classmethod
    def of_node(cls, node: Node, algorithm: str) -> NodeAddress:
        return cls(node.api_url, node.secret, algorithm)


@dataclass(frozen=True, slots=True)
class NodeEnd:
    """What the node made of the `end`."""

    outcome: NodeOutcome

    @property
    def answer(self) -> str:
        """SUCCESS, the messageKey of a FAILED answer (notFound: not running there), or '' without an answer."""
        if not self.outcome.answered:
            return ""
        return "SUCCESS" if succeeded(self.outcome.result) else message_key(self.outcome.result.body) or "?"

    @property
    def node_failed(self) -> bool:
        """The node itself failed (no answer, an unusable one, internalError, ...): not the request's fault."""
        return self.outcome.verdict != "ok"

    @property
    def gone(self) -> bool:
        """The meeting no longer runs there: ended now, or it was not running (nothing left to end)."""
        return not self.node_failed and self.answer in ("SUCCESS", "notFound")

    def describe(self) -> str:
        """'ended', 'not running', or 'failed: <why>' (a panic's per-meeting outcome)."""
        if self.node_failed:
            return f"failed: {self.outcome.reason}"
        if self.answer == "SUCCESS":
            return "ended"
        if self.answer == "notFound":
            return "not running"
        return f"failed: {self.answer or f'HTTP {self.outcome.result.status}'}"


async def end_on_node(
    client: NodeClient, node: NodeAddress, meeting_id: str, *, timeout: float | None = None
) -> NodeEnd:
    """Send `end` for `meeting_id` to the node. Never raises for a node's failure; `timeout` defaults
    to api.node_request_timeout."""
    url = f"{node.api_url}end?{signed_query('end', [('meetingID', meeting_id)], node.secret, node.algorithm)}"
    try:
        response = await client.fetch(url, timeout=timeout)
    except NodeRequestError as exc:
        return NodeEnd(outcome_of_error(exc))
    return NodeEnd(outcome_of_response(response))
