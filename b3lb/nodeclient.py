"""Outbound HTTP on aiohttp: calls and polls to BBB nodes, and tenants' callback URLs.

One `ClientSession` per purpose, each with its own connection pool (created lazily inside the
running loop): "api" (pass-through calls and creates), "poll" (the poller) and the callback session
(tenant-supplied URLs, through b3lb/urlguard.py's resolver). A slow poll cycle thus never takes the
slots of API calls, and no tenant URL shares a connection with a node.

aiohttp gives us its C parser (malformed heads and broken chunks are rejected), kept-alive
connections per host, TLS verified against the system's CAs, and gzip/deflate decoding in bounded
steps. On top of it:
- answers are read in chunks and counted, so neither a huge answer nor a small compressed one that
  inflates beyond `api.max_node_answer_bytes` is held in memory beyond that cap;
- a request is retried on a new connection only when it is idempotent (aiohttp's own rule, GET/HEAD
  here): a POST is never sent twice;
- every failure is a `NodeRequestError` whose `kind` says how far the request got.
URLs are sent with their path and query unchanged (encoded=True), as the node's checksum requires.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import ClientTimeout
from yarl import URL

from b3lb.config import ApiConfig, CallbacksConfig
from b3lb.urlguard import GuardedResolver, URLGuard, URLRefused

# Names this process in node access logs (and lets tests tell instances apart).
USER_AGENT = f"b3lb/0.1 ({socket.gethostname()}; pid {os.getpid()})"
# Encodings we decode with a bounded inflater (no brotli/zstd even if their modules are installed).
ACCEPT_ENCODING = "gzip, deflate"
# Seconds an idle connection is kept: longer than a poll interval, so every poll reuses its connection.
KEEPALIVE_SECONDS = 30.0
NODE_PURPOSES = ("api", "poll")
MAX_CACHED_TIMEOUTS = 32
# Kernel receive buffer of a poll connection (the kernel doubles it). One kept-alive connection per
# node: with the default (autotuned up to MBs) uvloop reads a whole answer into its 256 KB TLS read
# buffer at once, and every page so touched stays resident per node. 32 KB caps that, and a poll
# answer of ~100 KB still arrives in a few round trips inside one data centre.
POLL_RECEIVE_BUFFER = 16 * 1024

# NodeRequestError.kind: how far a failed request got.
LOCAL = "local"  # b3lb waited too long for a free connection slot; nothing was sent (not the node's fault)
CONNECT = "connect"  # refused, name lookup or TLS failure, bad URL: the request certainly never reached the node
RESET = "reset"  # the connection was closed or reset before an answer came: the request was (maybe partly) sent
TIMEOUT = "timeout"  # sent, but no complete answer in time: the node may have acted on it
ANSWER = "answer"  # the node answered, but unusably: malformed, truncated, undecodable or too large


@dataclass(slots=True)
class NodeResponse:
    code: int
    body: bytes
    content_type: str


class NodeRequestError(Exception):
    """No usable HTTP answer. `str(exc)` is a short reason; `kind` is one of LOCAL, CONNECT, RESET,
    TIMEOUT, ANSWER (whether a create may go to another node depends on it)."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


class _Pool:
    """A session and the slots that bound its requests in flight (and so its connections)."""

    __slots__ = ("session", "slots")

    def __init__(self, session: aiohttp.ClientSession, size: int) -> None:
        self.session = session
        self.slots = asyncio.Semaphore(size)


class NodeClient:
    def __init__(
        self,
        config: ApiConfig,
        callbacks: CallbacksConfig | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context` replaces the default verification (system CAs plus `api.node_ca_file`) for
        every pool, callbacks included: for tests and benchmarks with their own CA."""
        self.connect_timeout = config.node_connect_timeout
        self.request_timeout = config.node_request_timeout
        self.max_connections = config.max_node_connections
        self.max_answer_bytes = config.max_node_answer_bytes
        self.node_ca_file = config.node_ca_file
        self.guard = URLGuard((callbacks or CallbacksConfig()).allowed_networks)
        self.ssl_context = ssl_context
        self._pools: dict[str, _Pool] = {}
        self._callback_pool: _Pool | None = None
        self._timeouts: dict[float, ClientTimeout] = {}
        self._closed = False

    # -- requests -----------------------------------------------------------------------------

    async def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
        purpose: str = "api",
    ) -> NodeResponse:
        """One request to a node, answer read whole (up to `api.max_node_answer_bytes`).
        `timeout` (default `api.node_request_timeout`) covers the whole request."""
        pool = self._pools.get(purpose) or self._open(purpose)
        headers = {"Content-Type": content_type} if content_type and body is not None else None
        data = body if method == "POST" else None
        seconds = timeout or self.request_timeout
        slots = pool.slots
        if slots.locked():
            client_timeout = await self._take_slot(slots, seconds)
        else:  # the common case, without a coroutine of our own: a free slot is taken at once
            await slots.acquire()
            client_timeout = self._timeouts.get(seconds) or self._timeout(seconds)
        try:
            # Awaited directly rather than as a context manager: released below, as its exit would.
            response = await pool.session.request(
                method, URL(url, encoded=True), data=data, headers=headers, timeout=client_timeout,
                allow_redirects=False,
            )
            try:
                answer = await self._read(response)
            finally:
                response.release()
            return NodeResponse(response.status, answer, response.headers.get("Content-Type") or "text/xml")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, RuntimeError) as exc:
            raise _classified(exc) from None
        finally:
            slots.release()

    async def fetch_callback(self, url: str, *, timeout: float) -> int:
        """GET a tenant-supplied URL through the guard; the answer's status (its body is not read).
        Raises URLRefused (never retry: the URL is not allowed) or NodeRequestError."""
        return await self._callback("GET", url, None, None, timeout)

    async def post_callback(self, url: str, body: bytes, content_type: str, *, timeout: float) -> int:
        """POST `body` to a tenant-supplied URL through the guard (a recording-ready callback); the
        answer's status, its body not read. Redirects are answers, never followed; the POST is sent
        at most once (aiohttp retries only idempotent requests). Raises URLRefused or NodeRequestError."""
        return await self._callback("POST", url, body, content_type, timeout)

    async def _callback(
        self, method: str, url: str, body: bytes | None, content_type: str | None, timeout: float
    ) -> int:
        try:
            target = URL(url, encoded=True)
        except (ValueError, TypeError):
            raise URLRefused("unparsable URL") from None
        self.guard.check_url(target)  # IP literals; names are checked by the session's resolver
        pool = self._callback_pool or self._open_callbacks()
        headers = {"Content-Type": content_type} if content_type else None
        client_timeout = await self._take_slot(pool.slots, timeout)
        try:
            async with pool.session.request(
                method, target, data=body, headers=headers, timeout=client_timeout, allow_redirects=False
            ) as response:
                return response.status  # the unread body closes the connection: nothing is reused
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, RuntimeError) as exc:
            raise _classified(exc) from None
        finally:
            pool.slots.release()

    async def _take_slot(self, slots: asyncio.Semaphore, seconds: float) -> ClientTimeout:
        """Take a slot (waiting for one within the request's time); the timeout for what is left."""
        if not slots.locked():
            await slots.acquire()  # a free slot: returns without suspending
            return self._timeout(seconds)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(seconds):
                await slots.acquire()
        except TimeoutError:
            raise NodeRequestError(f"no free connection slot within {seconds:g} s", LOCAL) from None
        left = max(seconds - (loop.time() - started), 0.001)
        return ClientTimeout(total=left, connect=min(self.connect_timeout, left))

    def _timeout(self, seconds: float) -> ClientTimeout:
        """One ClientTimeout per timeout value, built once."""
        cached = self._timeouts.get(seconds)
        if cached is None:
            cached = ClientTimeout(total=seconds, connect=min(self.connect_timeout, seconds))
            if len(self._timeouts) < MAX_CACHED_TIMEOUTS:
                self._timeouts[seconds] = cached
        return cached

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, failing (and closing the connection) as soon as it exceeds the cap."""
        cap = self.max_answer_bytes
        length = response.content_length
        if length is not None:
            if length > cap:
                response.close()
                raise NodeRequestError(f"answer of {length} bytes is larger than {cap}", ANSWER)
            if "Content-Encoding" not in response.headers:
                return await response.read()  # the parser stops at Content-Length: within the cap
        parts: list[bytes] = []
        size = 0
        content = response.content
        while chunk := await content.readany():  # decoded bytes, inflated in bounded steps
            size += len(chunk)
            if size > cap:
                response.close()
                raise NodeRequestError(f"answer larger than {cap} bytes", ANSWER)
            parts.append(chunk)
        return b"".join(parts)

    # -- sessions -----------------------------------------------------------------------------

    def _open(self, purpose: str) -> _Pool:
        if purpose not in NODE_PURPOSES:
            raise ValueError(f"unknown purpose {purpose!r}")
        small = _small_receive_buffer if purpose == "poll" else None
        pool = self._pools[purpose] = self._new_pool(self._node_ssl(), None, small)
        return pool

    def _open_callbacks(self) -> _Pool:
        ssl_setting: ssl.SSLContext | bool = self.ssl_context if self.ssl_context is not None else True
        self._callback_pool = self._new_pool(ssl_setting, GuardedResolver(self.guard))
        return self._callback_pool

    def _new_pool(
        self,
        ssl_setting: ssl.SSLContext | bool,
        resolver: GuardedResolver | None,
        socket_factory: SocketFactory | None = None,
    ) -> _Pool:
        if self._closed:
            raise NodeRequestError("client closed", LOCAL)
        connector = aiohttp.TCPConnector(
            # The pool's slots bound its connections in use. The connector's own limit stays off: a wait
            # inside it would look like a connect timeout (the node's fault) instead of kind LOCAL.
            limit=0,
            limit_per_host=0,
            keepalive_timeout=KEEPALIVE_SECONDS,
            ssl=ssl_setting,
            resolver=resolver,
            use_dns_cache=resolver is None,  # a guarded name is resolved and checked for every connection
            socket_factory=socket_factory,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
            cookie_jar=aiohttp.DummyCookieJar(),  # nodes' cookies are nobody's business
            timeout=self._timeout(self.request_timeout),
            auto_decompress=True,
        )
        return _Pool(session, self.max_connections)

    async def prepare(self) -> None:
        """Build the TLS context for `api.node_ca_file` in a thread: loading the system's CAs takes
        70-80 ms, which on the loop would stall every request at the first TLS call to a node."""
        if self.ssl_context is None and self.node_ca_file:
            self.ssl_context = await asyncio.to_thread(self._ca_file_context)

    def _node_ssl(self) -> ssl.SSLContext | bool:
        if self.ssl_context is not None:
            return self.ssl_context
        if not self.node_ca_file:
            return True  # aiohttp's default context (built at its import): the system's CAs
        self.ssl_context = self._ca_file_context()  # prepare() was not awaited: build it here
        return self.ssl_context

    def _ca_file_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=self.node_ca_file)  # added to the system's CAs
        return context

    async def aclose(self) -> None:
        """Close every session; later requests fail with kind LOCAL."""
        self._closed = True
        pools = [*self._pools.values(), *([self._callback_pool] if self._callback_pool else [])]
        self._pools.clear()
        self._callback_pool = None
        for pool in pools:
            await pool.session.close()


SocketFactory = Callable[[tuple[Any, ...]], socket.socket]


def _small_receive_buffer(addr_info: tuple[Any, ...]) -> socket.socket:
    family, kind, proto = addr_info[0], addr_info[1], addr_info[2]
    sock = socket.socket(family=family, type=kind, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, POLL_RECEIVE_BUFFER)
    return sock


def _classified(exc: BaseException) -> NodeRequestError:
    """An aiohttp/OS error as a NodeRequestError with a short reason and its kind."""
    if isinstance(exc, NodeRequestError):
        return exc
    kind, reason = _kind_and_reason(exc)
    return NodeRequestError(reason, kind)


def _kind_and_reason(exc: BaseException) -> tuple[str, str]:
    # Order matters: aiohttp's connection errors are OSErrors, its timeouts are TimeoutErrors.
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return CONNECT, "connect timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return CONNECT, "TLS certificate not trusted"
    if isinstance(exc, aiohttp.ClientSSLError):
        return CONNECT, "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return CONNECT, "name lookup failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return CONNECT, f"cannot connect: {exc.os_error.strerror or type(exc.os_error).__name__}"
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError, ValueError)):
        return CONNECT, "invalid URL"
    if isinstance(exc, TimeoutError):
        return TIMEOUT, "timed out"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return RESET, "connection closed before an answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ANSWER, "incomplete or malformed answer body"
    if isinstance(exc, aiohttp.ClientResponseError):
        first_line = str(exc.message).strip().split("\n", 1)[0].rstrip(":")  # the parser adds the bytes below
        return ANSWER, f"malformed answer: {first_line[:80]}"
    if isinstance(exc, OSError):
        return RESET, f"connection reset: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, (aiohttp.ClientConnectionError, RuntimeError)):  # session or connector closed
        return LOCAL, "client closed"
    return ANSWER, f"unusable answer: {type(exc).__name__}"
