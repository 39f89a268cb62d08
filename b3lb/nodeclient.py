"""Outbound HTTP to BBB nodes: one shared client, hard timeouts, errors as values.

The client is Tornado's libcurl client: it keeps connections to nodes alive between requests
(Tornado's own client opens a new TCP/TLS connection for every request, which costs more CPU
than the rest of a pass-through call), resolves names without blocking, and sends the URL
string unchanged, as the node's checksum check requires.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import HTTPClientError, HTTPRequest

from b3lb.config import ApiConfig

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
        self.http = CurlAsyncHTTPClient(force_instance=True, max_clients=config.max_node_connections)
        # Keep a connection to every node of a large fleet between poll cycles (libcurl's default
        # cache holds only 4 per concurrent transfer).
        self.http._multi.setopt(pycurl.M_MAXCONNECTS, KEEP_CONNECTIONS)

    async def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> NodeResponse:
        headers = {"User-Agent": USER_AGENT}
        if content_type and body is not None:
            headers["Content-Type"] = content_type
        request = HTTPRequest(
            url,
            method=method,
            body=body if method == "POST" else None,
            headers=headers,
            connect_timeout=min(self.connect_timeout, timeout or self.connect_timeout),
            request_timeout=timeout or self.request_timeout,
            follow_redirects=False,
            decompress_response=True,
            allow_nonstandard_methods=True,
        )
        try:
            response = await self.http.fetch(request, raise_error=False)
        except HTTPClientError as exc:  # transport failures (refused, timeout, reset) arrive as 599
            raise NodeRequestError(exc.message or f"HTTP {exc.code}") from None
        except (TimeoutError, OSError) as exc:
            raise NodeRequestError(str(exc) or type(exc).__name__) from None
        if response.code == 599:
            raise NodeRequestError(str(response.error) if response.error else "no answer")
        return NodeResponse(
            code=response.code,
            body=response.body or b"",
            content_type=response.headers.get("Content-Type", "text/xml"),
        )

    def close(self) -> None:
        self.http.close()
