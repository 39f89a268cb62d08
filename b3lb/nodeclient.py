"""Outbound HTTP to BBB nodes: one shared client, hard timeouts, errors as values.

The client (b3lb/httpclient.py) keeps connections to nodes alive between requests (Tornado's own
client opens a new TCP/TLS connection for every request, which costs more CPU than the rest of a
pass-through call), resolves names without blocking, and sends the URL's path and query
unchanged, as the node's checksum check requires.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from b3lb.config import ApiConfig
from b3lb.httpclient import HttpClient, HttpError

# Names this process in node access logs (and lets tests tell instances apart).
USER_AGENT = f"b3lb/0.1 ({socket.gethostname()}; pid {os.getpid()})"
KEEP_CONNECTIONS = 5000


@dataclass(slots=True)
class NodeResponse:
    code: int
    body: bytes
    content_type: str


class NodeRequestError(Exception):
    """The node did not give a usable HTTP answer (timeout, refused, reset)."""


class NodeClient:
    def __init__(self, config: ApiConfig) -> None:
        self.connect_timeout = config.node_connect_timeout
        self.request_timeout = config.node_request_timeout
        self.http = HttpClient(
            max_connections=config.max_node_connections, user_agent=USER_AGENT, keep_connections=KEEP_CONNECTIONS
        )

    async def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> NodeResponse:
        headers = [f"Content-Type: {content_type}"] if content_type and body is not None else None
        request_timeout = timeout or self.request_timeout
        try:
            code, data, kind = await self.http.fetch(
                url,
                method=method,
                body=body if method == "POST" else None,
                headers=headers,
                connect_timeout=min(self.connect_timeout, request_timeout),
                timeout=request_timeout,
            )
        except HttpError as exc:
            raise NodeRequestError(str(exc)) from None
        return NodeResponse(code=code, body=data, content_type=kind or "text/xml")

    def close(self) -> None:
        self.http.close()
